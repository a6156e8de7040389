"""Experiments: the review's claims as runnable sweeps with a question, named arms, an
analysis and the direction the review expects (``tme-abm experiment NAME [--quick]``).

An experiment is a sweep spec under ``configs/experiments/`` with an ``experiment:``
block. Running it runs the sweep (Dask, finished runs skipped) and then writes, under
``OUT/experiment/``: per-arm statistics with 95% intervals (``arms.csv``), every arm
against the reference arm (``comparisons.csv``: Fisher's exact test for rates,
Mann-Whitney U for continuous outcomes), the expected directions with the measured
verdict (``expectations.csv``), time courses per arm (``timecourse.csv``), figures and a
``report.md`` for docs/validation.md. The ``surrogate`` analysis adds ROC AUCs of two
predictors of durable response with bootstrap intervals (``auc.csv``, ``roc.png``).
``--quick`` runs the block's ``quick`` variant (fewer replicates, a smaller, shorter
lattice) into its own folder; it checks the pipeline, not the biology.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from .config import Strict, format_validation_error
from .sweep import SweepError, SweepSpec, design_points, load_spec, read_manifest, read_table, run_spec
from .sweep_summary import mean_ci, wilson

EXPERIMENTS_DIR = Path("configs") / "experiments"
RATES = {"response_rate": "responded", "cr_rate": "complete_response", "severe_crs_rate": "severe_crs",
         "any_crs_rate": "any_crs"}
"""Per-arm rates -> the per-run boolean column they count (compared by Fisher's exact test)."""
CONTINUOUS = ("peak_blood_car_t", "peak_expansion_over_baseline_burden", "burden_ratio_at_end", "baseline_burden",
              "max_crs_grade", "peak_cytokine", "antigen_negative_fraction_end", "peak_blood_car_t_day")
"""Per-run outcomes summarised by median and compared by Mann-Whitney U."""
SERIES = {
    "burden_relative": "tumor burden / baseline",
    "blood_car_t": "blood CAR T (cells)",
    "systemic_cytokine": "systemic cytokine (pg/mL)",
    "antigen_negative_fraction": "antigen-negative fraction of alive tumor",
    "antigen_low_fraction": "antigen-low or negative fraction of alive tumor",
    "car_t_on_lattice": "CAR T on the lattice",
}
LOG_SERIES = {"blood_car_t": 1e3, "systemic_cytokine": 0.1, "burden_relative": 1e-3}
"""Series drawn on a log axis, with the lowest value shown (zeros and the cytokine's
exponential tail below it are not informative)."""
GROUPS = ("durable response", "no durable response")
"""The arms of a surrogate analysis: runs with CR or PR at the end, and the others."""


class QuickConfig(Strict):
    """The small variant: replicates (and samples of a sampled design) and overrides
    merged over the spec's ``set``."""

    replicates: int = Field(2, ge=1)
    samples: int | None = Field(None, ge=1)
    set: dict[str, Any] = {}


class Expectation(Strict):
    """The review's direction: ``metric`` is higher in arm ``higher`` than in ``lower``
    (surrogate analysis: metric ``auc`` and two predictor names), or, with ``increasing``,
    rises along that ordered list of arms (Kendall's tau-b over every run of those arms,
    the arm's position against the run's value)."""

    metric: str
    higher: str | None = None
    lower: str | None = None
    increasing: list[str] = []
    claim: str = ""

    @model_validator(mode="after")
    def _pair_or_trend(self):
        if bool(self.increasing) == (self.higher is not None or self.lower is not None):
            raise ValueError("give either higher and lower, or increasing (an ordered list of arms)")
        if self.increasing and len(self.increasing) < 2:
            raise ValueError("increasing needs at least two arms")
        if not self.increasing and (self.higher is None or self.lower is None):
            raise ValueError("give both higher and lower")
        return self

    @property
    def arms(self) -> list[str]:
        return self.increasing or [self.higher, self.lower]


class ExperimentConfig(Strict):
    question: str = Field(min_length=1)
    analysis: Literal["arms", "surrogate"] = "arms"
    arms: list[str] = []
    """One name per design point, in design order (default: the point's parameter values)."""
    reference: str | None = None
    """The arm the others are compared with (default: the first)."""
    series: list[Literal[tuple(SERIES)]] = ["burden_relative", "blood_car_t", "systemic_cytokine"]
    predictors: list[str] = ["peak_blood_car_t", "peak_expansion_over_baseline_burden"]
    """surrogate: per-run outcomes whose ROC AUC for durable response is compared."""
    expect: list[Expectation] = []
    quick: QuickConfig = QuickConfig()


def _spec_dirs() -> list[Path]:
    """Where experiments live: ``configs/experiments`` under the working directory, then
    under the source tree (an editable install or a checkout)."""
    dirs = [root / EXPERIMENTS_DIR for root in (Path.cwd(), Path(__file__).resolve().parents[1])]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in {x.resolve() for x in dirs[:i]}]


def find(name: str | Path) -> Path:
    """The spec of experiment ``name``: a path, or ``NAME.yaml`` in :func:`_spec_dirs`."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for d in _spec_dirs():
        if (d / f"{name}.yaml").exists():
            return d / f"{name}.yaml"
    raise SweepError(f"no experiment {str(name)!r}: expected a spec file or one of {', '.join(available()) or 'none'} "
                     f"(in {EXPERIMENTS_DIR}/)")


def available() -> list[str]:
    """Every experiment :func:`find` can resolve by name."""
    return sorted({p.stem for d in _spec_dirs() for p in d.glob("*.yaml")})


def experiment_config(spec: SweepSpec, path) -> ExperimentConfig:
    if spec.experiment is None:
        raise SweepError(f"{path}: not an experiment (no 'experiment:' block)")
    try:
        exp = ExperimentConfig.model_validate(spec.experiment)
    except ValidationError as exc:
        raise SweepError(format_validation_error(exc, f"{path}: experiment", ExperimentConfig)) from None
    n = len(design_points(spec))
    if exp.arms and len(exp.arms) != n:
        raise SweepError(f"{path}: experiment.arms names {len(exp.arms)} arms but the design has {n} points")
    names = arm_names(spec, exp)
    if len(set(names)) != len(names):
        raise SweepError(f"{path}: experiment.arms: names must be unique, got {names}")
    if exp.reference is not None and exp.reference not in names:
        raise SweepError(f"{path}: experiment.reference {exp.reference!r} is not an arm ({', '.join(names)})")
    for i, e in enumerate(exp.expect):
        if exp.analysis == "surrogate":
            ok = e.metric == "auc" and not e.increasing and set(e.arms) <= set(exp.predictors)
            allowed = f"metric auc, higher and lower between predictors {exp.predictors}"
        else:
            ok = e.metric in (*RATES, *CONTINUOUS) and set(e.arms) <= set(names)
            allowed = f"metric one of {', '.join((*RATES, *CONTINUOUS))}; arms {', '.join(names)}"
        if not ok:
            raise SweepError(f"{path}: experiment.expect.{i} {e.model_dump()}: expected {allowed}")
    return exp


def arm_names(spec: SweepSpec, exp: ExperimentConfig) -> list[str]:
    points = design_points(spec)
    if exp.arms:
        return list(exp.arms)
    return [", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in p.items()) for p in points]


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def load(name, quick: bool = False) -> tuple[SweepSpec, Path, ExperimentConfig, Path]:
    """(spec, base config path, experiment block, spec path); the quick variant if asked."""
    path = find(name)
    spec, base = load_spec(path)
    exp = experiment_config(spec, path)
    if quick:
        update = {"replicates": exp.quick.replicates, "set": {**spec.set, **exp.quick.set},
                  "name": f"{spec.name}-quick"}
        if exp.quick.samples is not None:
            update["design"] = spec.design.model_copy(update={"samples": exp.quick.samples})
        spec = spec.model_copy(update=update)
    return spec, base, exp, path


def run_experiment(name, out=None, *, quick: bool = False, workers: int | None = None,
                   scheduler: str | None = None, gpus: list[int] | None = None, progress: bool = True) -> dict:
    """Run (or finish) an experiment's sweep and write its analysis; returns what was
    written by name plus ``out`` and ``failed`` (runs that did not complete)."""
    spec, base, exp, _ = load(name, quick)
    out = Path(out) if out is not None else Path("runs") / "experiments" / spec.name
    table = run_spec(spec, base, out, workers=workers, scheduler=scheduler, gpus=gpus, progress=progress)
    written = analyse(out)
    written["out"] = out
    written["failed"] = int((table["status"] != "complete").sum())
    return written


# ---- analysis ---------------------------------------------------------------------


def per_run(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The complete runs with their arm and boolean outcome columns."""
    t = table[table["status"] == "complete"].copy()
    t["arm"] = [names[p] for p in t["point"]]
    resp = t["response_at_end"].astype(str)
    t["responded"] = resp.isin(["CR", "PR"])
    t["complete_response"] = resp == "CR"
    t["severe_crs"] = t["max_crs_grade"] >= 3
    t["any_crs"] = t["max_crs_grade"] >= 1
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
    from scipy import stats

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
    from scipy import stats

    pos, val = [], []
    for i, arm in enumerate(increasing):
        x = _per_run_values(runs, metric, arm)
        pos += [i] * len(x)
        val += x.tolist()
    if len(set(pos)) < 2 or len(set(val)) < 2:
        return (0.0, 1.0) if len(set(pos)) >= 2 else (math.nan, math.nan)
    res = stats.kendalltau(pos, val)
    return float(res.statistic), float(res.pvalue)


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


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for boolean ``label`` (Mann-Whitney U / n1 n0,
    ties counted half); NaN if a class is empty."""
    from scipy.stats import rankdata

    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over every threshold."""
    order = np.argsort(-score, kind="stable")
    lab = label[order]
    tpr = np.concatenate([[0], np.cumsum(lab) / max(lab.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~lab) / max((~lab).sum(), 1)])
    return fpr, tpr


def auc_table(runs: pd.DataFrame, predictors: list[str], seed: int, n_boot: int = 2000) -> tuple[pd.DataFrame, dict]:
    """ROC AUC of each predictor for durable response (CR or PR at the end of the run)
    with a percentile bootstrap 95% interval, and the paired bootstrap of every
    difference (same resamples); returns the table and {(a, b): (diff, low, high, p)}."""
    label = runs["responded"].to_numpy(bool)
    scores = {p: runs[p].to_numpy(float) for p in predictors}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0C]))
    n = len(label)
    boots = {p: [] for p in predictors}
    for _ in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        for p in predictors:
            boots[p].append(roc_auc(scores[p][idx], label[idx]))
    rows = []
    for p in predictors:
        b = np.array(boots[p], float)
        b = b[np.isfinite(b)]
        lo, hi = (np.percentile(b, [2.5, 97.5]).tolist() if len(b) else (math.nan, math.nan))
        rows.append({"predictor": p, "auc": roc_auc(scores[p], label), "ci_low": lo, "ci_high": hi, "runs": n,
                     "responders": int(label.sum())})
    diffs = {}
    for a in predictors:
        for b_ in predictors:
            if a == b_:
                continue
            d = np.array(boots[a], float) - np.array(boots[b_], float)
            d = d[np.isfinite(d)]
            point = roc_auc(scores[a], label) - roc_auc(scores[b_], label)
            if len(d):
                lo, hi = np.percentile(d, [2.5, 97.5])
                p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
            else:
                lo = hi = p = math.nan
            diffs[(a, b_)] = (point, float(lo), float(hi), p)
    return pd.DataFrame(rows), diffs


def timecourse(out: Path, runs: pd.DataFrame, series: list[str]) -> pd.DataFrame:
    """Per arm, day and series: median, quartiles, mean and 95% t interval over the
    replicates, from every run file's time series sampled once per 0.25 day."""
    from .io import open_run

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
    ``OUT/experiment/``; returns the paths by name."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    spec = SweepSpec.model_validate(manifest["spec"])
    exp = experiment_config(spec, out / "sweep.yaml")
    names = arm_names(spec, exp)
    table = read_table(out)
    runs = per_run(table, names)
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
                              "runs": len(runs), "failed": len(failed)}

    arms = arm_table(runs, names, failed["arm"].value_counts())
    written["arms"] = folder / "arms.csv"
    arms.to_csv(written["arms"], index=False)
    ref = exp.reference or names[0]
    comps = pd.DataFrame([compare(runs, m, a, ref) for a in names if a != ref for m in (*RATES, *CONTINUOUS)])
    written["comparisons"] = folder / "comparisons.csv"
    comps.to_csv(written["comparisons"], index=False)

    expectations = []
    if exp.analysis == "surrogate":
        auc, diffs = auc_table(runs, exp.predictors, spec.seed)
        written["auc"] = folder / "auc.csv"
        auc.to_csv(written["auc"], index=False)
        result["auc"] = auc.to_dict(orient="records")
        by_predictor = auc.set_index("predictor")["auc"]
        for e in exp.expect:
            d, lo, hi, p = diffs[(e.higher, e.lower)]
            expectations.append(_expectation(e, e.higher, e.lower, by_predictor[e.higher], by_predictor[e.lower], d, p,
                                             "paired bootstrap", lo, hi))
    else:
        for e in exp.expect:
            hi_arm, lo_arm = (e.increasing[-1], e.increasing[0]) if e.increasing else (e.higher, e.lower)
            vh, vl = _arm_value(runs, e.metric, hi_arm), _arm_value(runs, e.metric, lo_arm)
            if e.increasing:
                d, p = trend(runs, e.metric, e.increasing)
                test = f"kendall_tau_b over {' < '.join(e.increasing)}"
            else:
                c = compare(runs, e.metric, e.higher, e.lower)
                d, p, test = c["difference"], c["p_value"], c["test"]
            expectations.append(_expectation(e, hi_arm, lo_arm, vh, vl, d, p, test))
    exps = pd.DataFrame(expectations, columns=["claim", "metric", "higher", "lower", "value_higher", "value_lower",
                                               "difference", "ci_low", "ci_high", "p_value", "test", "verdict"])
    written["expectations"] = folder / "expectations.csv"
    exps.to_csv(written["expectations"], index=False)
    result["expectations"] = expectations

    tc = timecourse(out, runs, exp.series)
    written["timecourse"] = folder / "timecourse.csv"
    tc.to_csv(written["timecourse"], index=False)

    from . import plots

    written["outcomes_png"] = plots.outcomes_figure(arms, runs, names, folder / "outcomes.png")
    written["timecourse_png"] = plots.timecourse_figure(tc, names, exp.series, folder / "timecourse.png",
                                                         crs_thresholds=_crs_thresholds(spec))
    if exp.analysis == "surrogate":
        written["roc_png"] = plots.roc_figure(runs, exp.predictors, auc, folder / "roc.png")

    result["arms"] = arms[["arm", "runs", "response_rate", "response_rate_ci_low", "response_rate_ci_high",
                           "severe_crs_rate", "severe_crs_rate_ci_low", "severe_crs_rate_ci_high",
                           "peak_blood_car_t_median"]].to_dict(orient="records")
    written["result"] = folder / "result.json"
    written["result"].write_text(json.dumps(result, indent=1, default=_json_default))
    written["report"] = folder / "report.md"
    written["report"].write_text(report_markdown(spec, manifest, exp, names, arms, exps,
                                                 auc if exp.analysis == "surrogate" else None, len(failed)))
    return written


def _expectation(e: Expectation, higher: str, lower: str, value_higher: float, value_lower: float,
                 difference: float, p: float, test: str, ci_low: float = math.nan, ci_high: float = math.nan) -> dict:
    """One row of ``expectations.csv``: the measured values, the test and the verdict."""
    return {"claim": e.claim, "metric": e.metric, "higher": higher, "lower": lower,
            "value_higher": float(value_higher), "value_lower": float(value_lower), "difference": difference,
            "ci_low": ci_low, "ci_high": ci_high, "p_value": p, "test": test, "verdict": verdict(difference, p)}


def _crs_thresholds(spec: SweepSpec) -> list[float]:
    """The CRS thresholds of the runs' config (for the cytokine panel)."""
    from .config import ConfigError, load_config
    from .sweep import _overrides

    try:
        return list(load_config(spec.base, _overrides(spec, {})).patient.crs_thresholds)
    except (ConfigError, OSError):  # the base config has moved since the runs: draw none
        return []


def _json_default(v):
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    raise TypeError(type(v).__name__)


def _ci(v, lo, hi, pct=True) -> str:
    if not np.isfinite(v):
        return "n/a"
    if pct:
        return f"{100 * v:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"
    return f"{v:.3g} ({lo:.3g}-{hi:.3g})"


def report_markdown(spec: SweepSpec, manifest: dict, exp: ExperimentConfig, names: list[str], arms: pd.DataFrame,
                    exps: pd.DataFrame, auc: pd.DataFrame | None, failed: int) -> str:
    """A validation-report section: question, setup, per-arm table, verdicts, figures."""
    points = manifest["points"]
    lines = [f"### {spec.name}", "", f"**Question.** {exp.question.strip()}", "",
             f"**Setup.** Base config `{Path(spec.base).name}`"
             + (f" with {', '.join(f'`{k}={v}`' for k, v in spec.set.items())}" if spec.set else "")
             + f"; {spec.design.kind} design, {len(points)} {'points' if auc is not None else 'arms'} x "
               f"{spec.replicates} replicates "
               f"(sweep seed {spec.seed}); {int(arms['runs'].sum())} complete runs, {failed} failed.", ""]
    if auc is not None:
        ranges = "; ".join(f"`{k}` {v[0]:.3g} to {v[1]:.3g}" + (" (log)" if k in spec.design.log else "")
                           for k, v in spec.design.parameters.items())
        lines += [f"Sampled: {ranges}. Arms below are the runs with and without a durable response.", ""]
    elif spec.design.kind in ("grid", "list"):
        lines += ["| arm | parameters |", "|---|---|"]
        for name, p in zip(names, points):
            params = "; ".join(f"`{k}`: {json.dumps(v)}" for k, v in p.items())
            lines.append(f"| {name} | {params} |")
        lines.append("")
    lines += ["| arm | runs | response (CR+PR at end) | CR | severe CRS (grade >= 3) | peak blood CAR T, median (IQR) "
              "| peak expansion / baseline burden, median | antigen-negative at end, mean |",
              "|---|---|---|---|---|---|---|---|"]
    for _, a in arms.iterrows():
        lines.append(
            f"| {a['arm']} | {a['runs']} | {_ci(a['response_rate'], a['response_rate_ci_low'], a['response_rate_ci_high'])}"
            f" | {_ci(a['cr_rate'], a['cr_rate_ci_low'], a['cr_rate_ci_high'])}"
            f" | {_ci(a['severe_crs_rate'], a['severe_crs_rate_ci_low'], a['severe_crs_rate_ci_high'])}"
            f" | {a['peak_blood_car_t_median']:.3g} ({a['peak_blood_car_t_q25']:.3g}-{a['peak_blood_car_t_q75']:.3g})"
            f" | {a['peak_expansion_over_baseline_burden_median']:.3g}"
            f" | {_ci(a['antigen_negative_fraction_end_mean'], a['antigen_negative_fraction_end_ci_low'], a['antigen_negative_fraction_end_ci_high'])} |")
    lines.append("")
    if auc is not None:
        lines += ["| predictor of durable response | ROC AUC (95% bootstrap CI) | runs | responders |",
                  "|---|---|---|---|"]
        for _, r in auc.iterrows():
            lines.append(f"| {r['predictor']} | {_ci(r['auc'], r['ci_low'], r['ci_high'], pct=False)} | {r['runs']} "
                         f"| {r['responders']} |")
        lines.append("")
    if len(exps):
        lines += ["| expected (the review) | measured | p | verdict |", "|---|---|---|---|"]
        for _, e in exps.iterrows():
            claim = e["claim"] or f"{e['metric']}: {e['higher']} > {e['lower']}"
            if str(e["test"]).startswith("kendall"):
                measured = (f"{e['metric']} from {e['value_lower']:.3g} ({e['lower']}) to {e['value_higher']:.3g} "
                            f"({e['higher']}), Kendall tau {e['difference']:.2f}")
            else:
                ci = f" (95% CI {e['ci_low']:.3g} to {e['ci_high']:.3g})" if np.isfinite(e["ci_low"]) else ""
                measured = (f"{e['metric']} {e['value_higher']:.3g} vs {e['value_lower']:.3g}, difference "
                            f"{e['difference']:.3g}{ci}")
            lines.append(f"| {claim} | {measured} | {e['p_value']:.2g} ({e['test']}) | {e['verdict']} |")
        lines.append("")
    figs = ["outcomes.png", "timecourse.png"] + (["roc.png"] if auc is not None else [])
    lines += [" ".join(f"![{f}]({f})" for f in figs), ""]
    return "\n".join(lines)
