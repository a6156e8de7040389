"""Experiment specs: an experiment is a sweep spec under ``configs/experiments/`` with an
``experiment:`` block (the question, named arms, a reference arm, the directions the
review expects and a ``quick`` variant). This module holds the block's schema, finds
experiments by name and loads them (docs/sweeps.md, "Experiments")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ...config import ConfigError, Strict, format_validation_error, load_config
from ...config.schema import FILE_NAME
from ...config.shipped import config_dirs
from ..errors import SweepError
from ..sweep import SweepSpec, design_points, load_spec, task_overrides

EXPERIMENTS_DIR = Path("configs") / "experiments"
RATES = {"response_rate": "responded", "cr_rate": "complete_response", "severe_crs_rate": "severe_crs",
         "any_crs_rate": "any_crs", "mrd_negative_rate": "mrd_negative", "relapse_rate": "relapsed",
         "extinct_rate": "extinct"}
"""Per-arm rates -> the per-run boolean column they count (compared by Fisher's exact test)."""
CONTINUOUS = ("peak_blood_car_t", "peak_expansion_over_baseline_burden", "burden_ratio_at_end", "baseline_burden",
              "max_crs_grade", "peak_cytokine", "antigen_negative_fraction_end", "peak_blood_car_t_day",
              "time_to_cr_days", "peak_disease_car_t")
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
"""The arms of a surrogate analysis: runs with CR or PR on the assessment day, and the others."""


TESTS = {"rate": "fisher_exact", "continuous": "mann_whitney_u", "trend": "kendall_tau_b",
         "auc": "paired_bootstrap"}
"""The one test for each kind of expectation (all two-sided): a rate between two arms,
a continuous outcome between two arms, a trend along ordered arms, a difference of ROC
AUCs (surrogate analysis)."""
CORRECTIONS = {"holm": "Holm (family-wise error)", "fdr_bh": "Benjamini-Hochberg (false-discovery rate)",
               "none": "none (each test at its own alpha: the strict choice for claims of no difference)"}


class QuickConfig(Strict):
    """The small variant: replicates (and samples of a sampled design), overrides merged
    over the spec's ``set`` and the day its runs are assessed (they are shorter)."""

    replicates: int = Field(2, ge=1)
    samples: int | None = Field(None, ge=1)
    set: dict[str, Any] = {}
    assessment_day: float | None = Field(None, gt=0)


class Expectation(Strict):
    """An expected direction: ``metric`` is higher in arm ``higher`` than in ``lower``
    (surrogate analysis: metric ``auc`` and two predictor names), or, with ``increasing``,
    rises along that ordered list of arms (Kendall's tau-b over every run of those arms,
    the arm's position against the run's value); or, with ``equal`` (two arms), no
    difference between them (the same two-sided test, the claim holding where it finds
    none; the difference's 95% interval is reported). ``test`` names the test
    (:data:`TESTS`, the one for its kind) and ``alpha`` the level its corrected p value
    is held to."""

    metric: str
    higher: str | None = None
    lower: str | None = None
    increasing: list[str] = []
    equal: list[str] = []
    test: Literal[tuple(TESTS.values())]
    alpha: float = Field(gt=0, le=0.2)
    claim: str = ""

    @model_validator(mode="after")
    def _pair_or_trend(self):
        if self.equal:
            if len(self.equal) != 2 or self.increasing or self.higher is not None or self.lower is not None:
                raise ValueError("equal takes two arms, and neither higher, lower nor increasing")
            return self
        if bool(self.increasing) == (self.higher is not None or self.lower is not None):
            raise ValueError("give either higher and lower, increasing (an ordered list of arms), or equal "
                             "(two arms)")
        if self.increasing and len(self.increasing) < 2:
            raise ValueError("increasing needs at least two arms")
        if not self.increasing and (self.higher is None or self.lower is None):
            raise ValueError("give both higher and lower")
        return self

    @property
    def arms(self) -> list[str]:
        return self.increasing or self.equal or [self.higher, self.lower]

    @property
    def kind(self) -> str:
        if self.metric == "auc":
            return "auc"
        return "trend" if self.increasing else "rate" if self.metric in RATES else "continuous"


class ExperimentConfig(Strict):
    """The experiment block. Everything but ``exploratory`` and ``quick`` is the protocol,
    declared before the runs: the folder's ``sweep.yaml`` keeps it as it was when the
    first run started, and the analysis refuses a protocol changed since."""

    question: str = Field(min_length=1)
    analysis: Literal["arms", "surrogate"] = "arms"
    arms: list[str] = []
    """One name per design point, in design order (default: the point's parameter values)."""
    reference: str | None = None
    """The arm the others are compared with (default: the first)."""
    assessment_day: float = Field(28.0, gt=0)
    """Day (from infusion) the runs end and response is read; every point must set
    ``patient.assessment_day`` to it and end on it."""
    correction: Literal[tuple(CORRECTIONS)]
    """The multiple-comparison correction across ``expect``."""
    series: list[Literal[tuple(SERIES)]] = ["burden_relative", "blood_car_t", "systemic_cytokine"]
    predictors: list[str] = ["peak_blood_car_t", "peak_expansion_over_baseline_burden"]
    """surrogate: per-run outcomes whose ROC AUC for durable response is compared."""
    expect: list[Expectation] = Field(min_length=1)
    exploratory: list[Expectation] = []
    """Tests added after the protocol (allowed at any time): reported apart, uncorrected,
    marked exploratory."""
    quick: QuickConfig = QuickConfig()

    def protocol(self) -> dict:
        """The declared part, as compared with the folder's declaration."""
        return self.model_dump(mode="json", exclude={"exploratory", "quick"})


def _spec_dirs() -> list[Path]:
    """Where experiments live: ``experiments/`` in each folder of shipped configs
    (:func:`tme_abm.config.shipped.config_dirs`)."""
    return [d / "experiments" for d in config_dirs() if (d / "experiments").is_dir()]


def find(name: str | Path) -> Path:
    """The spec of experiment ``name``: a path, or ``NAME.yaml`` in :func:`_spec_dirs`."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for d in _spec_dirs() if re.fullmatch(FILE_NAME, str(name)) else []:  # a name, not a path out of the folder
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
    for block in ("expect", "exploratory"):
        for i, e in enumerate(getattr(exp, block)):
            if exp.analysis == "surrogate":
                ok = e.metric == "auc" and not e.increasing and set(e.arms) <= set(exp.predictors)
                allowed = f"metric auc, higher and lower between predictors {exp.predictors}"
            else:
                ok = e.metric in (*RATES, *CONTINUOUS) and set(e.arms) <= set(names)
                allowed = f"metric one of {', '.join((*RATES, *CONTINUOUS))}; arms {', '.join(names)}"
            if not ok:
                raise SweepError(f"{path}: experiment.{block}.{i} {e.model_dump()}: expected {allowed}")
            if e.test != TESTS[e.kind]:
                raise SweepError(f"{path}: experiment.{block}.{i}.test {e.test!r}: a {e.kind} expectation is "
                                 f"tested by {TESTS[e.kind]!r}")
    return exp


def arm_names(spec: SweepSpec, exp: ExperimentConfig | None = None) -> list[str]:
    """The experiment's arm names, or (no names given, or a plain sweep) each point's
    swept values, ``key=value, ...`` by the last part of each key."""
    points = design_points(spec)
    if exp is not None and exp.arms:
        return list(exp.arms)
    return [", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in p.items()) for p in points]


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def declared(manifest: dict, where) -> tuple[ExperimentConfig, str]:
    """The protocol a folder's runs were declared under (its ``sweep.yaml``) and when."""
    block = manifest.get("declared")
    if not block:
        raise SweepError(f"{where}: no declared protocol in sweep.yaml (made by an older version); run the "
                         f"experiment into a new folder")
    try:
        return ExperimentConfig.model_validate(block["experiment"]), block["at"]
    except ValidationError as exc:
        raise SweepError(format_validation_error(exc, f"{where}: declared experiment", ExperimentConfig)) from None


def check_protocol(exp: ExperimentConfig, manifest: dict, where) -> None:
    """Refuse an experiment whose protocol differs from the one its folder's runs were
    declared under: a test added, dropped or changed, or another arm, reference,
    assessment day or correction. Exploratory tests may change at any time."""
    before, at = declared(manifest, where)
    now, then = exp.protocol(), before.protocol()
    changes = [f"experiment.{k} was {then[k]!r}, now {now[k]!r}" for k in now if k != "expect" and now[k] != then[k]]
    changes += [f"experiment.expect.{i} ({e['claim'] or e['metric']}) was not declared"
                for i, e in enumerate(now["expect"]) if e not in then["expect"]]
    changes += [f"declared test {e['claim'] or e['metric']!r} is gone" for e in then["expect"]
                if e not in now["expect"]]
    if changes:
        raise SweepError(f"{where}: the protocol differs from the one declared before the runs ({at}): "
                         f"{'; '.join(changes)}. Declared tests cannot change once runs exist; put a new test "
                         f"under experiment.exploratory, or run into a new folder")


def load(name, quick: bool = False,
         replicates: int | None = None) -> tuple[SweepSpec, Path, ExperimentConfig, Path]:
    """(spec, base config path, experiment block, spec path); the quick variant if asked,
    with ``replicates`` per point if given. Every point is checked to end on the
    assessment day."""
    path = find(name)
    spec, base = load_spec(path)
    exp = experiment_config(spec, path)
    if quick:
        day = exp.quick.assessment_day if exp.quick.assessment_day is not None else exp.assessment_day
        exp = exp.model_copy(update={"assessment_day": day})
        update = {"replicates": exp.quick.replicates, "set": {**spec.set, **exp.quick.set},
                  "name": f"{spec.name}-quick", "experiment": {**spec.experiment, "assessment_day": day}}
        if exp.quick.samples is not None:
            update["design"] = spec.design.model_copy(update={"samples": exp.quick.samples})
        spec = spec.model_copy(update=update)
    if replicates is not None:
        if replicates < 1:
            raise SweepError(f"--replicates {replicates}: must be at least 1")
        spec = spec.model_copy(update={"replicates": replicates})
    _check_assessment(spec, base, exp, path)
    return spec, base, exp, path


def _check_assessment(spec: SweepSpec, base: Path, exp: ExperimentConfig, path) -> None:
    """Every point's runs read response on ``exp.assessment_day`` and end on it or later
    (the outcomes at the end, the burden ratio and antigen-negative fraction, are read
    on the last day; relapse needs the days after)."""
    day = exp.assessment_day
    for i, point in enumerate(design_points(spec)):
        try:
            cfg = load_config(base, task_overrides(spec, point))
        except ConfigError as exc:
            raise SweepError(f"{path}: point {i} does not validate: {exc}") from None
        if abs(cfg.patient.assessment_day - day) > 1e-9 or cfg.end_day < day - 1e-9:
            raise SweepError(f"{path}: experiment.assessment_day {day:g}: point {i} has patient.assessment_day "
                             f"{cfg.patient.assessment_day:g} and ends on day {cfg.end_day:g}; set "
                             f"patient.assessment_day to {day:g} and time.duration_days so that its runs end then "
                             f"or later")
