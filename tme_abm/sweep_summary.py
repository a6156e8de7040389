"""Statistics across the replicates of a sweep (``tme-abm sweep-summary``): per-point
response and severe-CRS rates with Wilson 95% intervals, the CRS grade distribution,
peak expansion / baseline burden with a t interval, figures of outcomes against each
swept parameter, and SALib indices for Morris and Sobol designs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .sweep import SweepError, read_manifest, read_table

Z95 = 1.959963984540054
SENSITIVITY_OUTCOMES = ("burden_ratio_at_end", "peak_expansion_over_baseline_burden", "max_crs_grade",
                        "responded")
"""Outcomes (replicate means per point) analysed by SALib."""


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n (NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + Z95**2 / n
    mid = (p + Z95**2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / den
    # the interval contains p; min/max only absorb rounding at p = 0 or 1
    return max(0.0, min(p, mid - half)), min(1.0, max(p, mid + half))


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% t interval (NaN bounds for fewer than two values)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


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
    from .sweep import SweepSpec, problem

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
            from SALib.analyze import morris

            res = morris.analyze(prob, x, y, num_levels=spec["design"]["levels"], seed=spec["seed"])
            for i, name in enumerate(prob["names"]):
                rows.append({"outcome": outcome, "parameter": name, "mu_star": res["mu_star"][i],
                             "mu_star_conf": res["mu_star_conf"][i], "sigma": res["sigma"][i], "mu": res["mu"][i]})
        else:
            from SALib.analyze import sobol

            res = sobol.analyze(prob, y, calc_second_order=False, seed=spec["seed"])
            for i, name in enumerate(prob["names"]):
                rows.append({"outcome": outcome, "parameter": name, "S1": res["S1"][i], "S1_conf": res["S1_conf"][i],
                             "ST": res["ST"][i], "ST_conf": res["ST_conf"][i]})
    return pd.DataFrame(rows)


def figures(points: pd.DataFrame, params: list[str], out: Path) -> list[Path]:
    """For each swept parameter: response rate, severe-CRS rate (Wilson intervals) and
    peak expansion / burden (t interval) against it."""
    from matplotlib.figure import Figure

    written = []
    panels = [("response_rate", "response_ci_low", "response_ci_high", "response rate (CR + PR)"),
              ("severe_crs_rate", "severe_crs_ci_low", "severe_crs_ci_high", "severe CRS (grade >= 3)"),
              ("peak_expansion_over_burden", "peak_expansion_over_burden_ci_low",
               "peak_expansion_over_burden_ci_high", "peak expansion / baseline burden")]
    have = points[points["complete"] > 0] if "complete" in points else points
    for p in params:
        if p not in have or not pd.api.types.is_numeric_dtype(have[p]) or "response_rate" not in have:
            continue
        fig = Figure(figsize=(11, 3.6))
        axes = fig.subplots(1, 3)
        for ax, (col, lo, hi, label) in zip(axes, panels):
            d = have.sort_values(p)
            ax.errorbar(d[p], d[col], yerr=[d[col] - d[lo], d[hi] - d[col]], fmt="o", ms=4, capsize=3, alpha=0.8)
            ax.set_xlabel(p)
            ax.set_title(label, fontsize=9)
            if d[p].min() > 0 and d[p].max() / d[p].min() > 50:
                ax.set_xscale("log")
        axes[0].set_ylim(-0.05, 1.05)
        axes[1].set_ylim(-0.05, 1.05)
        fig.tight_layout()
        path = out / f"outcomes_vs_{p.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def summarize_sweep(out_dir) -> dict[str, Path]:
    """Write ``summary/points.csv``, the figures and (Morris/Sobol) ``summary/sensitivity.csv``
    for a sweep folder; returns what was written by name."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    table = read_table(out)
    d = manifest["spec"]["design"]
    params = list(d["parameters"]) if d["kind"] != "list" else sorted(set().union(*d["points"]))
    folder = out / "summary"
    folder.mkdir(exist_ok=True)
    points = per_point(table, params)
    written = {"points": folder / "points.csv"}
    points.to_csv(written["points"], index=False)
    for path in figures(points, params, folder):
        written[path.stem] = path
    sens = sensitivity(manifest, table)
    if sens is not None:
        written["sensitivity"] = folder / "sensitivity.csv"
        sens.to_csv(written["sensitivity"], index=False)
    return written
