"""The biology's default parameters, read from the tables in ``data/``:

* ``fields.yaml``: the seven default reaction-diffusion fields;
* ``rules.csv``: the default modulators of every population's behaviours, one row per
  modulator with its source (in the spirit of PhysiCell's cell-rule tables);
* ``edits.yaml``: the gene edits a CAR T product may carry.

Each function returns a fresh mapping in the shape a config takes, so the config merges
a user's keys over it (docs/config.md).
"""

from __future__ import annotations

import copy
import csv
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).with_name("data")

_MODULATOR_KEYS: dict[str, Callable[[str], Any]] = {
    "signal": str, "direction": str, "low": lambda s: {"true": True, "false": False}[s],
    "half_max": float, "hill_power": float, "max_effect": float}


@functools.cache
def _yaml(name: str) -> dict:
    return yaml.safe_load((DATA / name).read_text())


@functools.cache
def _rules() -> dict:
    out: dict = {}
    with open(DATA / "rules.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            mod = {k: convert(row[k]) for k, convert in _MODULATOR_KEYS.items()}
            out.setdefault(row["population"], {}).setdefault(row["behaviour"], {})[row["modulator"]] = mod
    return out


def default_fields() -> dict[str, dict]:
    """Field name -> field keys (``data/fields.yaml``)."""
    return copy.deepcopy(_yaml("fields.yaml"))


def default_rules() -> dict[str, dict]:
    """Population -> behaviour -> modulator name -> modulator keys (``data/rules.csv``)."""
    return copy.deepcopy(_rules())


def default_edits() -> dict[str, dict]:
    """Edit name -> ``remove`` / ``change`` (``data/edits.yaml``)."""
    return copy.deepcopy(_yaml("edits.yaml"))
