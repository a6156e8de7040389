"""The target statistics of a calibration: per run, the measures its targets read; per
point (the replicates of one parameter set), each target's statistic and the variance
of that estimate (docs/calibration.md, "Targets")."""

from __future__ import annotations

import math

import numpy as np

from ...engine import rng as crng
from ...io.readers import Run
from ..measures import calibration
from .spec import CalibrationSpec, Target

STREAMS = crng.streams(11, "calibration", ("bootstrap", "design", "candidates", "wave", "confirm"))
"""A calibration's random numbers: bootstraps, designs, candidate points, its runs' seeds."""
BOOTSTRAP = 400
"""Resamples of the replicates behind the variance of a median, quantile or sd."""


def run_measures(run: Run, spec: CalibrationSpec) -> dict[str, float | str]:
    """The measures ``spec``'s targets read from one run, by target name (before the
    target's transform): an outcome, a calibration measure, or a series on a day (the
    first recorded row on or after it; NaN if the run ends before)."""
    out: dict[str, float | str] = {}
    extra: dict | None = None
    ts = None
    for name, t in spec.targets.items():
        if t.day is not None:
            if ts is None:
                ts = run.timeseries.copy()
                ts["blood_car_t_per_ul"] = ts["blood_car_t"] / (run.config.patient.blood_volume_ml * 1000.0)
            day = ts["day"].to_numpy()
            i = int(np.searchsorted(day, t.day - 1e-9))
            out[name] = float(ts[t.measure].iloc[i]) if i < len(day) else math.nan
        elif t.measure in run.outcomes:
            out[name] = run.outcomes[t.measure]
        else:
            extra = calibration(run) if extra is None else extra
            out[name] = float(extra[t.measure])
    return out


def statistic(target: Target, values: list) -> float:
    """The target's statistic over the replicates' measures (NaN measures are left out of
    every statistic but a rate, where they count as not meeting it)."""
    if target.statistic == "rate":
        if target.equals is not None:
            hit = [v == target.equals for v in values]
        else:
            hit = [isinstance(v, int | float) and v >= target.at_least for v in values]
        return float(np.mean(hit)) if values else math.nan
    return _summary(target, _transformed(target, values))


def variance(target: Target, values: list, seed: int) -> float:
    """The variance of the statistic's estimate from these replicates: binomial for a
    rate (with half a success added, so that 0 and 1 are not certain), the sample
    variance over n for a mean, a bootstrap over the replicates (seeded) otherwise."""
    n = len(values)
    if target.statistic == "rate":
        p = (statistic(target, values) * n + 0.5) / (n + 1.0)
        return p * (1.0 - p) / (n + 1.0)
    x = _transformed(target, values)
    if x.size < 2:
        return math.nan
    if target.statistic == "mean":
        return float(x.var(ddof=1) / x.size)
    rng = crng.generator(seed, STREAMS("bootstrap"))
    draws = [_summary(target, rng.choice(x, x.size)) for _ in range(BOOTSTRAP)]
    return float(np.nanvar(draws, ddof=1))


def _summary(target: Target, x: np.ndarray) -> float:
    """The statistic (not a rate) of finite, transformed measures ``x`` ((n,))."""
    if x.size == 0:
        return math.nan
    if target.statistic == "mean":
        return float(x.mean())
    if target.statistic == "median":
        return float(np.median(x))
    if target.statistic == "quantile":
        return float(np.quantile(x, target.q))
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def _transformed(target: Target, values: list) -> np.ndarray:
    """(n,) the finite measures among ``values``, after the target's transform."""
    x = np.array([float(v) for v in values if isinstance(v, int | float) and math.isfinite(float(v))])
    if target.transform == "log10":
        x = np.log10(np.maximum(x, 1e-6))  # a measure of 0 (no cells left) counts as 1e-6
    return x


def point_statistics(spec: CalibrationSpec, measures: list[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T,) statistics and (T,) variances of one point from its replicates' measures
    (:func:`run_measures`), in the order of ``spec.targets``."""
    stats, var = [], []
    for name, t in spec.targets.items():
        values = [m[name] for m in measures]
        stats.append(statistic(t, values))
        var.append(variance(t, values, seed))
    return np.array(stats), np.array(var)
