"""Statistics across the replicates of a sweep (``tme-abm sweep-summary``): per-point
response and severe-CRS rates with Wilson 95% intervals, the CRS grade distribution,
peak expansion / baseline burden with a t interval, and SALib indices for Morris and
Sobol designs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from SALib.analyze import morris as morris_analysis
from SALib.analyze import sobol as sobol_analysis

from .errors import SweepError
from .statistics import mean_ci, wilson
from .sweep import SweepSpec, problem, read_manifest, swept_keys
from .table import read_table

SENSITIVITY_OUTCOMES = ("burden_ratio_at_end", "peak_expansion_over_baseline_burden", "max_crs_grade",
                        "responded")
"""Outcomes (replicate means per point) analysed by SALib."""


def per_point(table: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """One row per point: its parameters and the statistics over its complete replicates."""
    rows = []
    for point, g in table.groupby("point", sort=True):
        done = g[g["status"] == "complete"]
        n = len(done)
        row = {"point": point, **{p: g[p].iloc[0] for p in params}, "replicates": len(g), "complete": n,
               "failed": int((g["status"] != "complete").sum())}
        if n:
            responded = done["response_at_end"].isin(["CR", "PR"])
            row["response_rate"] = responded.mean()
            row["response_ci_low"], row["response_ci_high"] = wilson(int(responded.sum()), n)
            cr = done["response_at_end"] == "CR"
            row["cr_rate"] = cr.mean()
            severe = done["max_crs_grade"] >= 3
            row["severe_crs_rate"] = severe.mean()
            row["severe_crs_ci_low"], row["severe_crs_ci_high"] = wilson(int(severe.sum()), n)
            for grade in range(5):
                row[f"crs_grade_{grade}"] = float((done["max_crs_grade"] == grade).mean())
            m, lo, hi = mean_ci(done["peak_expansion_over_baseline_burden"].to_numpy(float))
            row.update(peak_expansion_over_burden=m, peak_expansion_over_burden_ci_low=lo,
                       peak_expansion_over_burden_ci_high=hi)
            row["burden_ratio_at_end_median"] = float(done["burden_ratio_at_end"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def sensitivity(manifest: dict, table: pd.DataFrame) -> pd.DataFrame | None:
    """SALib Morris (mu*, sigma) or first/total-order Sobol indices of each outcome in
    :data:`SENSITIVITY_OUTCOMES`, from the replicate means per point; None for other
    designs. Raises SweepError if points are missing (the samples must be complete)."""
    spec = manifest["spec"]
    kind = spec["design"]["kind"]
    if kind not in ("morris", "sobol"):
        return None
    prob = problem(SweepSpec.model_validate({**spec, "base": spec["base"]}))
    x = np.asarray(manifest["samples"], dtype=float)
    done = table[table["status"] == "complete"].copy()
    done["responded"] = done["response_at_end"].isin(["CR", "PR"]).astype(float)
    means = done.groupby("point")[list(SENSITIVITY_OUTCOMES)].mean(numeric_only=True)
    missing = sorted(set(range(len(x))) - set(means.index))
    if missing:
        raise SweepError(f"{kind} indices need every point; {len(missing)} of {len(x)} have no complete run "
                         f"(first: point {missing[0]})")
    rows = []
    for outcome in SENSITIVITY_OUTCOMES:
        y = means[outcome].reindex(range(len(x))).to_numpy(float)
        if kind == "morris":
            res = morris_analysis.analyze(prob, x, y, num_levels=spec["design"]["levels"], seed=spec["seed"])
            for i, name in enumerate(prob["names"]):
                rows.append({"outcome": outcome, "parameter": name, "mu_star": res["mu_star"][i],
                             "mu_star_conf": res["mu_star_conf"][i], "sigma": res["sigma"][i], "mu": res["mu"][i]})
        else:
            res = sobol_analysis.analyze(prob, y, calc_second_order=False, seed=spec["seed"])
            for i, name in enumerate(prob["names"]):
                rows.append({"outcome": outcome, "parameter": name, "S1": res["S1"][i], "S1_conf": res["S1_conf"][i],
                             "ST": res["ST"][i], "ST_conf": res["ST_conf"][i]})
    return pd.DataFrame(rows)


def summarize_sweep(out_dir) -> dict[str, Path]:
    """Write ``summary/points.csv`` and (Morris/Sobol) ``summary/sensitivity.csv`` for a
    sweep folder; returns what was written by name (figures:
    :func:`tme_abm.viz.study_figures.sweep_figures`)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    table = read_table(out)
    params = swept_keys(SweepSpec.model_validate(manifest["spec"]))
    folder = out / "summary"
    folder.mkdir(exist_ok=True)
    points = per_point(table, params)
    written = {"points": folder / "points.csv"}
    points.to_csv(written["points"], index=False)
    sens = sensitivity(manifest, table)
    if sens is not None:
        written["sensitivity"] = folder / "sensitivity.csv"
        sens.to_csv(written["sensitivity"], index=False)
    return written
