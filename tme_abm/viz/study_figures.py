"""Figures of sweeps and experiments, drawn from the tables their analyses wrote
(``tme-abm experiment``, ``tme-abm sweep-summary``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..studies.experiments.spec import LOG_SERIES, SERIES
from ..studies.statistics import roc_curve
from ..studies.sweep import SweepSpec, read_manifest, swept_keys


def experiment_figures(out_dir) -> dict[str, Path]:
    """Draw an analysed experiment folder's figures into ``OUT/experiment/``:
    ``outcomes.png``, ``timecourse.png`` and, for a surrogate analysis, ``roc.png``;
    returns their paths by name."""
    folder = Path(out_dir) / "experiment"
    result = json.loads((folder / "result.json").read_text())
    names = result["arm_names"]
    arms = pd.read_csv(folder / "arms.csv")
    runs = pd.read_csv(folder / "runs.csv")
    tc = pd.read_csv(folder / "timecourse.csv")
    written = {"outcomes_png": outcomes_figure(arms, runs, names, folder / "outcomes.png"),
               "timecourse_png": timecourse_figure(tc, names, result["series"], folder / "timecourse.png",
                                                   crs_thresholds=result["crs_thresholds"])}
    if result["analysis"] == "surrogate":
        auc = pd.read_csv(folder / "auc.csv")
        written["roc_png"] = roc_figure(runs, result["predictors"], auc, folder / "roc.png")
    return written


def sweep_figures(out_dir) -> dict[str, Path]:
    """Draw a summarised sweep folder's figures (``summary/outcomes_vs_<parameter>.png``);
    returns their paths by name."""
    out = Path(out_dir)
    params = swept_keys(SweepSpec.model_validate(read_manifest(out)["spec"]))
    points = pd.read_csv(out / "summary" / "points.csv")
    return {p.stem: p for p in outcomes_vs_parameter_figures(points, params, out / "summary")}


def outcomes_figure(arms, runs, names: list[str], path: Path) -> Path:
    """Per arm: response and severe-CRS rates with Wilson 95% intervals, and every run's
    peak blood CAR T (points) with the arm median (bar)."""
    fig = Figure(figsize=(max(9.0, 1.6 * len(names) + 4), 3.8))
    axes = fig.subplots(1, 3)
    x = np.arange(len(names))
    a = arms.set_index("arm").reindex(names)
    for ax, rate, title in ((axes[0], "response_rate", "response (CR + PR on the assessment day)"),
                            (axes[1], "severe_crs_rate", "severe CRS (grade >= 3)")):
        v = a[rate].to_numpy(float)
        lo, hi = a[f"{rate}_ci_low"].to_numpy(float), a[f"{rate}_ci_high"].to_numpy(float)
        ax.bar(x, v, color="#9ecae1", edgecolor="#3182bd")
        ax.errorbar(x, v, yerr=np.clip([v - lo, hi - v], 0, None), fmt="none", ecolor="k", capsize=4)
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=9)
    ax = axes[2]
    for i, name in enumerate(names):
        y = runs.loc[runs["arm"] == name, "peak_blood_car_t"].to_numpy(float)
        jitter = (np.arange(len(y)) - (len(y) - 1) / 2) * (0.5 / max(len(y), 1))
        ax.scatter(i + jitter, y, s=12, color="#1f77b4", alpha=0.7)
        if len(y):
            ax.hlines(np.median(y), i - 0.3, i + 0.3, color="k")
    if (runs["peak_blood_car_t"] > 0).any():
        ax.set_yscale("log")
    ax.set_title("peak blood CAR T (cells)", fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def timecourse_figure(tc, names: list[str], series: list[str], path: Path, crs_thresholds=()) -> Path:
    """One panel per series: the median over each arm's replicates with its IQR band
    (CRS grade thresholds marked on the cytokine panel)."""
    fig = Figure(figsize=(4.2 * len(series), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(series)))
    colours = [f"C{i % 10}" for i in range(len(names))]
    for ax, s in zip(axes, series):
        for name, c in zip(names, colours):
            g = tc[(tc["arm"] == name) & (tc["series"] == s)]
            if g.empty:
                continue
            ax.plot(g["day"], g["median"], color=c, label=name, lw=1.4)
            ax.fill_between(g["day"], g["q25"], g["q75"], color=c, alpha=0.2, lw=0)
        if s in LOG_SERIES and (tc.loc[tc["series"] == s, "median"] > 0).any():
            ax.set_yscale("log")
            ax.set_ylim(bottom=LOG_SERIES[s])
        if s == "systemic_cytokine" and crs_thresholds:
            for grade, c in enumerate(crs_thresholds, start=1):
                ax.axhline(c, color="k", ls=":", lw=0.7, alpha=0.6)
                ax.annotate(f"CRS {grade}", (0.01, c), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        ax.axvline(0, color="k", ls="--", lw=0.8, alpha=0.5)
        ax.set_xlabel("day (0 = first infusion)")
        ax.set_title(SERIES[s], fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def roc_figure(runs, predictors: list[str], auc, path: Path) -> Path:
    """ROC curves of each predictor for durable response, and the runs in the
    (baseline burden, peak blood CAR T) plane coloured by durable response."""
    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.subplots(1, 2)
    label = runs["responded"].to_numpy(bool)
    a = auc.set_index("predictor")
    for i, p in enumerate(predictors):
        fpr, tpr = roc_curve(runs[p].to_numpy(float), label)
        ax.plot(fpr, tpr, color=f"C{i}", label=f"{p} (AUC {a.loc[p, 'auc']:.2f})")
    ax.plot([0, 1], [0, 1], color="k", ls=":", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("durable response (CR/PR on the assessment day)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    for resp, c, name in ((True, "#2ca02c", "durable response"), (False, "#d62728", "no durable response")):
        g = runs[runs["responded"] == resp]
        ax2.scatter(g["baseline_burden"], g["peak_blood_car_t"], s=16, color=c, label=name, alpha=0.8)
    if (runs["baseline_burden"] > 0).all() and (runs["peak_blood_car_t"] > 0).all() and len(runs):
        ax2.set_xscale("log")
        ax2.set_yscale("log")
    ax2.set_xlabel("baseline burden (cells)")
    ax2.set_ylabel("peak blood CAR T (cells)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def outcomes_vs_parameter_figures(points: pd.DataFrame, params: list[str], out: Path) -> list[Path]:
    """For each swept parameter: response rate, severe-CRS rate (Wilson intervals) and
    peak expansion / burden (t interval) against it."""
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


