"""Calibration specs (``configs/calibration/*.yaml``): what a calibration declares before
any run: the config it calibrates, the free parameters with their prior ranges and the
source of each range, the target statistics with their values, tolerances and sources,
and the method with its budget (docs/calibration.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ...biology.outcomes import OUTCOME_KEYS
from ...config import ConfigError, Strict, format_validation_error, load_config, read_yaml
from ...config.schema import FILE_NAME
from ...config.shipped import find_config
from ..errors import SweepError
from ..sweep import overrides_of

RUN_MEASURES = ("peak_blood_car_t_per_ul", "blood_car_t_per_ul_day_28", "blood_car_t_per_ul_day_90")
"""Per-run measures besides the outcomes (:func:`tme_abm.studies.measures.calibration`)."""
SERIES = ("blood_car_t_per_ul", "blood_car_t", "systemic_cytokine", "crs_grade", "burden_relative", "tumor_alive")
"""Time-series columns a target may read on a given ``day``."""


class Prior(Strict):
    """A free parameter's prior: uniform between ``low`` and ``high`` (in log10 with
    ``log``), and the source or reason for that range."""

    low: float
    high: float
    log: bool = False
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform prior needs low > 0, got {self.low:g}")
        return self


class Target(Strict):
    """A target statistic: ``statistic`` of the per-run ``measure`` (an outcome, a
    :data:`RUN_MEASURES` entry, or with ``day`` a :data:`SERIES` column on that day)
    over the replicates of a point, after ``transform``; it should be ``value`` within
    ``tolerance``, per ``source``.

    Statistics: ``mean``, ``median``, ``quantile`` (``q``), ``sd`` (the between-patient
    spread), ``rate`` (the share of replicates whose measure ``equals`` a value or is
    ``at_least`` one)."""

    measure: str
    day: float | None = None
    statistic: Literal["mean", "median", "quantile", "sd", "rate"]
    q: float | None = Field(None, gt=0, lt=1)
    equals: str | float | None = None
    at_least: float | None = None
    transform: Literal["none", "log10"] = "none"
    value: float
    tolerance: float = Field(gt=0)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.statistic == "quantile") != (self.q is not None):
            raise ValueError("q is given with statistic quantile, and only then")
        if (self.statistic == "rate") != ((self.equals is None) != (self.at_least is None)):
            raise ValueError("statistic rate needs exactly one of equals, at_least (and the others neither)")
        if self.day is None and self.measure not in (*OUTCOME_KEYS, *RUN_MEASURES):
            raise ValueError(f"measure {self.measure!r}: not an outcome or a run measure "
                             f"({', '.join(RUN_MEASURES)}); a time-series column needs a day")
        if self.day is not None and self.measure not in SERIES:
            raise ValueError(f"measure {self.measure!r} on day {self.day:g}: the time-series columns a target "
                             f"may read are {', '.join(SERIES)}")
        return self


class Method(Strict):
    """History matching with Gaussian-process emulators (docs/calibration.md): ``waves``
    waves of ``points`` design points with ``replicates`` patients each; every wave's
    design is drawn from ``candidates`` candidate points not ruled out (implausibility
    below ``cutoff``) by the earlier waves; the chosen point is then run with
    ``confirm_replicates`` patients."""

    kind: Literal["history_matching"] = "history_matching"
    waves: int = Field(3, ge=1, le=20)
    points: int = Field(40, ge=4)
    replicates: int = Field(8, ge=1)
    candidates: int = Field(20000, ge=100)
    cutoff: float = Field(3.0, gt=0)
    confirm_replicates: int = Field(50, ge=1)


class CalibrationSpec(Strict):
    name: str = Field(min_length=1, pattern=FILE_NAME)
    config: str
    """The calibrated config (a path relative to the spec file, or a shipped config's name)."""
    set: dict[str, Any] = {}
    """Dotted overrides of every run (e.g. the run's length)."""
    seed: int = Field(0, ge=0)
    parameters: dict[str, Prior] = Field(min_length=1)
    targets: dict[str, Target] = Field(min_length=1)
    method: Method = Method()


def load_calibration(path) -> tuple[CalibrationSpec, Path]:
    """Read and check a calibration spec; returns it and the calibrated config's path.
    The config must load with every parameter at both ends of its prior, and must not
    set a free parameter itself (a calibrated default would not reach it)."""
    path = Path(path)
    try:
        spec = CalibrationSpec.model_validate(read_yaml(path))
    except ConfigError as exc:
        raise SweepError(str(exc).replace("config file", "calibration spec")) from None
    except ValidationError as exc:
        raise SweepError(format_validation_error(exc, str(path), CalibrationSpec)) from None
    base = (path.parent / spec.config).resolve()
    if not base.exists():
        try:
            base = find_config(spec.config).resolve()
        except ConfigError:
            raise SweepError(f"{path}: config: {spec.config}: not found beside the spec or among the shipped "
                             f"configs") from None
    raw = read_yaml(base)
    for key, prior in spec.parameters.items():
        if _dotted_in(raw, key):
            raise SweepError(f"{path}: parameters.{key}: {base.name} sets it itself, so a calibrated default "
                             f"would not reach it; remove it there or calibrate another key")
        for end in (prior.low, prior.high):
            try:
                load_config(base, overrides_of({**spec.set, key: end}))
            except ConfigError as exc:
                raise SweepError(f"{path}: parameters.{key}: the prior's end {end:g} does not validate: "
                                 f"{exc}") from None
    for name, t in spec.targets.items():
        if t.transform == "log10" and t.statistic == "rate":
            raise SweepError(f"{path}: targets.{name}: a rate is not log-transformed")
        if t.statistic == "rate" and not 0 <= t.value <= 1:
            raise SweepError(f"{path}: targets.{name}: a rate's value must be in [0, 1], got {t.value:g}")
        if not math.isfinite(t.value):
            raise SweepError(f"{path}: targets.{name}: value must be finite")
    return spec, base


def _dotted_in(raw: dict, key: str) -> bool:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
