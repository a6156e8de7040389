"""The report section of an experiment for docs/validation.md (``report.md``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..sweep import SweepSpec
from .spec import CORRECTIONS, ExperimentConfig


def _ci(v, lo, hi, pct=True) -> str:
    if not np.isfinite(v):
        return "n/a"
    if pct:
        return f"{100 * v:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"
    return f"{v:.3g} ({lo:.3g}-{hi:.3g})"


def _arm_ci(arm, key: str, value: str = "") -> str:
    """``_ci`` of one arm's column ``key`` (its value in ``value``, default ``key``) with
    the interval columns ``<key>_ci_low`` and ``<key>_ci_high``."""
    return _ci(arm[value or key], arm[f"{key}_ci_low"], arm[f"{key}_ci_high"])


def report_markdown(spec: SweepSpec, manifest: dict, exp: ExperimentConfig, names: list[str], arms: pd.DataFrame,
                    exps: pd.DataFrame, auc: pd.DataFrame | None, failed: int) -> str:
    """A validation-report section: question, setup, per-arm table, verdicts, figures."""
    points = manifest["points"]
    lines = [f"### {spec.name}", "", f"**Question.** {exp.question.strip()}", "",
             f"**Setup.** Base config `{Path(spec.base).name}`"
             + (f" with {', '.join(f'`{k}={v}`' for k, v in spec.set.items())}" if spec.set else "")
             + f"; {spec.design.kind} design, {len(points)} {'points' if auc is not None else 'arms'} x "
               f"{spec.replicates} replicates "
               f"(sweep seed {spec.seed}); {int(arms['runs'].sum())} complete runs, {failed} failed. "
               f"Response is read on day {exp.assessment_day:g} after infusion, the runs' last day.", ""]
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
    lines += ["| arm | runs | response (CR+PR on the assessment day) | CR | severe CRS (grade >= 3) "
              "| peak blood CAR T, median (IQR) | peak expansion / baseline burden, median "
              "| antigen-negative at end, mean |",
              "|---|---|---|---|---|---|---|---|"]
    for _, a in arms.iterrows():
        lines.append(
            f"| {a['arm']} | {a['runs']} | {_arm_ci(a, 'response_rate')} | {_arm_ci(a, 'cr_rate')}"
            f" | {_arm_ci(a, 'severe_crs_rate')}"
            f" | {a['peak_blood_car_t_median']:.3g} ({a['peak_blood_car_t_q25']:.3g}-{a['peak_blood_car_t_q75']:.3g})"
            f" | {a['peak_expansion_over_baseline_burden_median']:.3g}"
            f" | {_arm_ci(a, 'antigen_negative_fraction_end', 'antigen_negative_fraction_end_mean')} |")
    lines.append("")
    if auc is not None:
        lines += ["| predictor of durable response | ROC AUC (95% bootstrap CI) | runs | responders |",
                  "|---|---|---|---|"]
        for _, r in auc.iterrows():
            lines.append(f"| {r['predictor']} | {_ci(r['auc'], r['ci_low'], r['ci_high'], pct=False)} | {r['runs']} "
                         f"| {r['responders']} |")
        lines.append("")
    decl, explo = exps[exps["declared"]], exps[~exps["declared"]]
    lines += [f"**Declared before the runs** ({len(decl)} tests, two-sided, p adjusted across them by "
              f"{CORRECTIONS[exp.correction]}; a direction is reproduced where the adjusted p is below the "
              f"test's alpha, a claim of no difference (=) holds where it is not):", "",
              "| expected | measured | test | p | adjusted p | alpha | verdict |", "|---|---|---|---|---|---|---|"]
    lines += [_expectation_row(e, corrected=True) for _, e in decl.iterrows()]
    lines.append("")
    if len(explo):
        lines += ["**Exploratory** (not declared before the runs; p not corrected, verdicts are not findings):", "",
                  "| exploratory | measured | test | p | alpha | verdict |", "|---|---|---|---|---|---|"]
        lines += [_expectation_row(e, corrected=False) for _, e in explo.iterrows()]
        lines.append("")
    figs = ["outcomes.png", "timecourse.png"] + (["roc.png"] if auc is not None else [])
    lines += [" ".join(f"![{f}]({f})" for f in figs), ""]
    return "\n".join(lines)


def _expectation_row(e, corrected: bool) -> str:
    """One table row of an expectation (``expectations.csv`` row ``e``), with its adjusted
    p if ``corrected``."""
    claim = e["claim"] or f"{e['metric']}: {e['higher']} > {e['lower']}"
    if str(e["test"]).startswith("kendall"):
        measured = (f"{e['metric']} from {e['value_lower']:.3g} ({e['lower']}) to {e['value_higher']:.3g} "
                    f"({e['higher']}), Kendall tau {e['difference']:.2f}")
    else:
        ci = f" (95% CI {e['ci_low']:.3g} to {e['ci_high']:.3g})" if np.isfinite(e["ci_low"]) else ""
        measured = (f"{e['metric']} {e['value_higher']:.3g} vs {e['value_lower']:.3g}, "
                    f"difference {e['difference']:.3g}{ci}")
    p = f"{e['p_value']:.2g} | " + (f"{e['p_adjusted']:.2g} | " if corrected else "")
    return f"| {claim} | {measured} | {e['test']} | {p}{e['alpha']:g} | {e['verdict']} |"
