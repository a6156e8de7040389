"""The analysis of an experiment folder: per-run outcomes labelled by arm, per-arm
statistics with 95% intervals, every arm against the reference arm, the declared
expectations with their corrected p values and verdicts, then the exploratory ones
apart, time courses per arm; written as CSV and JSON under ``OUT/experiment/`` with the
report (figures: :mod:`tme_abm.viz.study_figures`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ...biology.patient import Systemic
from ...config import ConfigError, load_config
from ...io import open_run
from ..errors import SweepError
from ..statistics import adjusted_p, auc_table, mean_ci, median_difference_ci, rate_difference_ci, wilson
from ..sweep import SweepSpec, read_manifest, task_overrides
from ..table import read_table
from .report import report_markdown
from .spec import CONTINUOUS, GROUPS, RATES, Expectation, arm_names, check_protocol, declared, experiment_config


def per_run(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The complete runs with their arm and boolean outcome columns (response is read on
    the assessment day)."""
    t = table[table["status"] == "complete"].copy()
    t["arm"] = [names[p] for p in t["point"]]
    resp = t["response_at_assessment"].astype(str)
    t["responded"] = resp.isin(["CR", "PR"])
    t["complete_response"] = resp == "CR"
    t["severe_crs"] = t["max_crs_grade"] >= 3
    t["any_crs"] = t["max_crs_grade"] >= 1
    t["mrd_negative"] = t["mrd_negative_at_assessment"] == 1
    t["relapsed"] = np.isfinite(t["relapse_day"].to_numpy(float))
    t["extinct"] = t["extinct_at_end"] == 1
    return t


def arm_table(runs: pd.DataFrame, names: list[str], failed: pd.Series) -> pd.DataFrame:
    """Per arm: rates with Wilson 95% intervals, medians (IQR) of continuous outcomes,
    and the mean antigen-negative fraction with its t interval."""
    rows = []
    for arm in names:
        g = runs[runs["arm"] == arm]
        n = len(g)
        row = {"arm": arm, "runs": n, "failed": int(failed.get(arm, 0))}
        for rate, col in RATES.items():
            k = int(g[col].sum())
            row[rate] = k / n if n else math.nan
            row[f"{rate}_ci_low"], row[f"{rate}_ci_high"] = wilson(k, n)
        for col in CONTINUOUS:
            x = g[col].to_numpy(float)
            x = x[np.isfinite(x)]
            row[f"{col}_median"] = float(np.median(x)) if len(x) else math.nan
            row[f"{col}_q25"], row[f"{col}_q75"] = (np.percentile(x, [25, 75]).tolist() if len(x)
                                                    else (math.nan, math.nan))
        m, lo, hi = mean_ci(g["antigen_negative_fraction_end"].to_numpy(float))
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # a fraction: the t interval is cut to [0, 1]
        row.update(antigen_negative_fraction_end_mean=m, antigen_negative_fraction_end_ci_low=lo,
                   antigen_negative_fraction_end_ci_high=hi)
        rows.append(row)
    return pd.DataFrame(rows)


def compare(runs: pd.DataFrame, metric: str, a: str, b: str) -> dict:
    """Arm ``a`` against arm ``b`` on one metric: the two values (rate or median), their
    difference a - b and a two-sided p value (Fisher's exact test for rates, Mann-Whitney
    U for continuous outcomes; NaN when an arm has no run)."""
    xa, xb = _per_run_values(runs, metric, a), _per_run_values(runs, metric, b)
    va, vb = _arm_value(runs, metric, a), _arm_value(runs, metric, b)
    out = {"metric": metric, "arm": a, "against": b, "n": int((runs["arm"] == a).sum()),
           "n_against": int((runs["arm"] == b).sum()), "value": va, "value_against": vb, "difference": va - vb}
    if not (len(xa) and len(xb)):
        p = math.nan
    elif metric in RATES:
        ka, kb = int(xa.sum()), int(xb.sum())
        p = float(stats.fisher_exact([[ka, len(xa) - ka], [kb, len(xb) - kb]])[1])
    elif np.all(xa == xa[0]) and np.all(xb == xa[0]):
        p = 1.0  # every value equal: no test statistic, no difference
    else:
        p = float(stats.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    return {**out, "p_value": p, "test": "fisher_exact" if metric in RATES else "mann_whitney_u"}


def difference_ci(runs: pd.DataFrame, metric: str, a: str, b: str, seed: int = 0) -> tuple[float, float]:
    """95% interval of arm ``a`` minus arm ``b`` on ``metric``: Newcombe's interval for a
    rate, a bootstrap interval of the difference of medians otherwise (NaN without data)."""
    xa, xb = _per_run_values(runs, metric, a), _per_run_values(runs, metric, b)
    if not (len(xa) and len(xb)):
        return math.nan, math.nan
    if metric in RATES:
        return rate_difference_ci(int(xa.sum()), len(xa), int(xb.sum()), len(xb))
    return median_difference_ci(xa, xb, seed)


def _per_run_values(runs: pd.DataFrame, metric: str, arm: str) -> np.ndarray:
    """The arm's finite per-run values of ``metric`` (0/1 for a rate)."""
    g = runs[runs["arm"] == arm]
    x = (g[RATES[metric]] if metric in RATES else g[metric]).to_numpy(float)
    return x[np.isfinite(x)]


def _arm_value(runs: pd.DataFrame, metric: str, arm: str) -> float:
    """The arm's rate (a rate metric) or median."""
    x = _per_run_values(runs, metric, arm)
    if not len(x):
        return math.nan
    return float(x.mean()) if metric in RATES else float(np.median(x))


def trend(runs: pd.DataFrame, metric: str, increasing: list[str]) -> tuple[float, float]:
    """Kendall's tau-b between each run's position in the ordered arms and its value
    (0/1 for a rate metric), and its two-sided p value: a trend test that uses every run
    of every listed arm rather than the two ends only."""
    pos, val = [], []
    for i, arm in enumerate(increasing):
        x = _per_run_values(runs, metric, arm)
        pos += [i] * len(x)
        val += x.tolist()
    if len(set(pos)) < 2 or len(set(val)) < 2:
        return (0.0, 1.0) if len(set(pos)) >= 2 else (math.nan, math.nan)
    res = stats.kendalltau(pos, val)
    return float(res.statistic), float(res.pvalue)


def same_verdict(p: float, alpha: float = 0.05) -> str:
    """A claim of no difference against the measurement."""
    if not np.isfinite(p):
        return "inconclusive (no data)"
    return "agree (no difference found)" if p >= alpha else "differ"


def verdict(difference: float, p: float, alpha: float = 0.05) -> str:
    """The review's direction (difference > 0) against the measurement."""
    if not np.isfinite(difference):
        return "inconclusive (no data)"
    if difference > 0 and p < alpha:
        return "reproduced"
    if difference > 0:
        return "same direction, not significant"
    if difference == 0:
        return "not reproduced (no difference)"
    return "not reproduced (opposite direction)" + (", significant" if p < alpha else "")


def timecourse(out: Path, runs: pd.DataFrame, series: list[str]) -> pd.DataFrame:
    """Per arm, day and series: median, quartiles, mean and 95% t interval over the
    replicates, from every run file's time series sampled once per 0.25 day."""
    frames = []
    for _, r in runs.iterrows():
        ts = open_run(out / r["path"]).timeseries
        if ts.empty:
            continue
        alive = ts["tumor_alive"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            derived = {
                "burden_relative": ts["burden"].to_numpy(float) / r["baseline_burden"],
                "blood_car_t": ts["blood_car_t"].to_numpy(float),
                "systemic_cytokine": ts["systemic_cytokine"].to_numpy(float),
                "antigen_negative_fraction": np.where(alive > 0, ts["tumor_antigen_negative"] / alive, np.nan),
                "antigen_low_fraction": np.where(alive > 0, (ts["tumor_antigen_negative"] + ts["tumor_antigen_low"])
                                                 / alive, np.nan),
                "car_t_on_lattice": (ts["car_t_effector"] + ts["car_t_exhausted"]).to_numpy(float),
            }
        day = ts["day"].to_numpy(float)
        grid = np.arange(math.ceil(day[0] * 4) / 4, day[-1] + 1e-9, 0.25)
        idx = np.clip(np.searchsorted(day, grid - 1e-9), 0, len(day) - 1)
        for s in series:
            frames.append(pd.DataFrame({"arm": r["arm"], "run": r["path"], "series": s, "day": grid,
                                        "value": derived[s][idx]}))
    if not frames:
        return pd.DataFrame(columns=["arm", "series", "day", "runs", "median", "q25", "q75", "mean", "ci_low",
                                     "ci_high"])
    allv = pd.concat(frames, ignore_index=True)
    rows = []
    for (arm, s, day), g in allv.groupby(["arm", "series", "day"], sort=False):
        x = g["value"].to_numpy(float)
        x = x[np.isfinite(x)]
        m, lo, hi = mean_ci(x)
        q = np.percentile(x, [25, 50, 75]) if len(x) else [math.nan] * 3
        rows.append({"arm": arm, "series": s, "day": day, "runs": len(x), "median": q[1], "q25": q[0], "q75": q[2],
                     "mean": m, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def analyse(out_dir) -> dict[str, Path]:
    """Write the analysis of an experiment folder (its sweep must have run) into
    ``OUT/experiment/``; returns the paths by name. Only the replicates the folder was
    last run at count (an ensemble may hold more), and only the tests declared before the
    runs are corrected and given verdicts; a changed protocol is refused."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    spec = SweepSpec.model_validate(manifest["spec"])
    exp = experiment_config(spec, out / "sweep.yaml")
    check_protocol(exp, manifest, out)
    names = arm_names(spec, exp)
    table = read_table(out)
    table = table[table["replicate"] < spec.replicates]
    runs = per_run(table, names)
    wrong_day = runs["assessment_day"].to_numpy(float) != exp.assessment_day
    if wrong_day.any():
        raise SweepError(f"{out}: {int(wrong_day.sum())} runs were assessed on another day than the declared "
                         f"experiment.assessment_day {exp.assessment_day:g}")
    failed = table[table["status"] != "complete"].assign(arm=lambda t: [names[p] for p in t["point"]])
    if exp.analysis == "surrogate":
        # every point is one sampled (burden, dose): the groups worth comparing are the
        # durable responders and the others
        names = list(GROUPS)
        runs["arm"] = np.where(runs["responded"], GROUPS[0], GROUPS[1])
        failed = failed.assign(arm="failed")
    folder = out / "experiment"
    folder.mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    result: dict[str, Any] = {"name": spec.name, "question": exp.question, "analysis": exp.analysis,
                              "runs": len(runs), "failed": len(failed), "replicates": spec.replicates,
                              "assessment_day": exp.assessment_day, "correction": exp.correction,
                              "declared_at": declared(manifest, out)[1]}

    arms = arm_table(runs, names, failed["arm"].value_counts())
    written["arms"] = folder / "arms.csv"
    arms.to_csv(written["arms"], index=False)
    ref = exp.reference or names[0]
    comps = pd.DataFrame([compare(runs, m, a, ref) for a in names if a != ref for m in (*RATES, *CONTINUOUS)])
    written["comparisons"] = folder / "comparisons.csv"
    comps.to_csv(written["comparisons"], index=False)

    auc = diffs = None
    if exp.analysis == "surrogate":
        auc, diffs = auc_table(runs, exp.predictors, spec.seed)
        written["auc"] = folder / "auc.csv"
        auc.to_csv(written["auc"], index=False)
        result["auc"] = auc.to_dict(orient="records")
    exps = expectations(runs, exp, auc, diffs)
    written["expectations"] = folder / "expectations.csv"
    exps.to_csv(written["expectations"], index=False)
    result["expectations"] = exps[exps["declared"]].to_dict(orient="records")
    result["exploratory"] = exps[~exps["declared"]].to_dict(orient="records")

    tc = timecourse(out, runs, exp.series)
    written["timecourse"] = folder / "timecourse.csv"
    tc.to_csv(written["timecourse"], index=False)
    written["runs"] = folder / "runs.csv"
    runs.to_csv(written["runs"], index=False)

    # what the figures need besides the tables
    result.update(arm_names=names, series=exp.series, predictors=exp.predictors,
                  crs_thresholds=_crs_thresholds(spec))

    result["arms"] = arms[["arm", "runs", "response_rate", "response_rate_ci_low", "response_rate_ci_high",
                           "severe_crs_rate", "severe_crs_rate_ci_low", "severe_crs_rate_ci_high",
                           "peak_blood_car_t_median"]].to_dict(orient="records")
    written["result"] = folder / "result.json"
    written["result"].write_text(json.dumps(result, indent=1, default=_json_default))
    written["report"] = folder / "report.md"
    written["report"].write_text(report_markdown(spec, manifest, exp, names, arms, exps, auc, len(failed)))
    return written


EXPECTATION_COLUMNS = ["declared", "claim", "metric", "higher", "lower", "value_higher", "value_lower", "difference",
                       "ci_low", "ci_high", "test", "alpha", "p_value", "correction", "p_adjusted", "verdict"]


def expectations(runs: pd.DataFrame, exp, auc: pd.DataFrame | None = None, diffs: dict | None = None) -> pd.DataFrame:
    """One row per expectation: the declared ones first, their p values adjusted across
    the declared family by ``exp.correction`` and held to their alpha; then the
    exploratory ones, held to their alpha uncorrected (``declared`` False,
    ``p_adjusted`` NaN). A surrogate analysis takes its AUCs and paired-bootstrap
    differences from :func:`tme_abm.studies.statistics.auc_table`."""
    rows = [_expectation(runs, e, auc, diffs) for e in (*exp.expect, *exp.exploratory)]
    n = len(exp.expect)
    adjusted = adjusted_p([r["p_value"] for r in rows[:n]], exp.correction)
    for i, (r, e) in enumerate(zip(rows, (*exp.expect, *exp.exploratory))):
        p = adjusted[i] if i < n else math.nan
        held = p if i < n else r["p_value"]
        r.update(declared=i < n, alpha=e.alpha, correction=exp.correction if i < n else "none", p_adjusted=p,
                 verdict=same_verdict(held, e.alpha) if e.equal else verdict(r["difference"], held, e.alpha))
    return pd.DataFrame(rows, columns=EXPECTATION_COLUMNS).astype({"declared": bool})


def _expectation(runs: pd.DataFrame, e: Expectation, auc, diffs) -> dict:
    """The measured values, difference, p value and test of one expectation."""
    ci_low = ci_high = math.nan
    if e.kind == "auc":
        hi_arm, lo_arm = e.higher, e.lower
        by_predictor = auc.set_index("predictor")["auc"]
        vh, vl = by_predictor[hi_arm], by_predictor[lo_arm]
        d, ci_low, ci_high, p = diffs[(hi_arm, lo_arm)]
    else:
        hi_arm, lo_arm = (e.increasing[-1], e.increasing[0]) if e.increasing else \
            tuple(e.equal) if e.equal else (e.higher, e.lower)
        vh, vl = _arm_value(runs, e.metric, hi_arm), _arm_value(runs, e.metric, lo_arm)
        if e.increasing:
            d, p = trend(runs, e.metric, e.increasing)
        else:
            c = compare(runs, e.metric, hi_arm, lo_arm)
            d, p = c["difference"], c["p_value"]
            ci_low, ci_high = difference_ci(runs, e.metric, hi_arm, lo_arm)
    test = f"{e.test} over {' < '.join(e.increasing)}" if e.increasing else e.test
    return {"claim": e.claim, "metric": e.metric, "higher": hi_arm, "lower": lo_arm, "value_higher": float(vh),
            "value_lower": float(vl), "difference": float(d), "ci_low": ci_low, "ci_high": ci_high, "p_value": p,
            "test": test}


def _crs_thresholds(spec: SweepSpec) -> list[float]:
    """The cytokine levels at which CRS grades 1-4 begin in the runs' config, untreated
    (for the cytokine panel)."""
    try:
        cfg = load_config(spec.base, task_overrides(spec, {})).patient
        return Systemic(cfg).grade_thresholds()
    except (ConfigError, OSError):  # the base config has moved since the runs: draw none
        return []


def _json_default(v):
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    raise TypeError(type(v).__name__)


