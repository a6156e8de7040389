"""The biology's default parameters, read from the tables in ``data/``:

* ``fields.yaml``: the seven default reaction-diffusion fields;
* ``rules.csv``: the default modulators of every population's behaviours, one row per
  modulator with its source (in the spirit of PhysiCell's cell-rule tables);
* ``edits.yaml``: the gene edits a CAR T product may carry;
* ``parameters.csv``: every other biological default (rates, probabilities, the
  patient's kinetics and CRS, perfusion, the therapies' effects), one row per config key
  with its value, units and source (or "assumption: ..." / "calibrated ...").

Each function returns a fresh mapping in the shape a config takes, so the config merges
a user's keys over it (docs/config.md).
"""

from __future__ import annotations

import ast
import copy
import csv
import functools
import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).with_name("data")

_MODULATOR_KEYS: dict[str, Callable[[str], Any]] = {
    "signal": str, "direction": str, "low": lambda s: {"true": True, "false": False}[s],
    "half_max": float, "hill_power": float, "max_effect": float}


def _number(text: str) -> float:
    """A value of parameters.csv: a number or an arithmetic expression of numbers and
    ``ln(x)`` (a rate written as its derivation, e.g. ``ln(2) / (2 * 1440)``)."""
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ln" and len(node.args) == 1:
            return math.log(ev(node.args[0]))
        raise ValueError(f"parameters.csv: {text!r} is not a number or an expression of numbers and ln()")
    return ev(ast.parse(text.strip(), mode="eval").body)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@functools.cache
def _parameters() -> dict[str, dict]:
    out = {}
    with open(DATA / "parameters.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            text = row["value"].strip()
            value = [_number(v) for v in text.strip("[]").split(",")] if text.startswith("[") else _number(text)
            out[row["key"]] = {"value": value, "units": row["units"], "source": row["source"]}
    return out


def default_parameters() -> dict[str, dict]:
    """Dotted config key -> ``value`` (a float, or a list of floats), ``units`` and
    ``source`` (``data/parameters.csv``)."""
    return copy.deepcopy(_parameters())


def parameter(key: str) -> Any:
    """The default of the biological config key ``key`` (``data/parameters.csv``): a
    float, or a list of floats (a fresh copy)."""
    return copy.deepcopy(_parameters()[key]["value"])


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
