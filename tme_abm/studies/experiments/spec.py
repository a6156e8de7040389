"""Experiment specs: an experiment is a sweep spec under ``configs/experiments/`` with an
``experiment:`` block (the question, named arms, a reference arm, the directions the
review expects and a ``quick`` variant). This module holds the block's schema, finds
experiments by name and loads them (docs/sweeps.md, "Experiments")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ...config import Strict, format_validation_error
from ..errors import SweepError
from ..sweep import SweepSpec, design_points, load_spec

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
    """Where experiments live: ``configs/experiments`` under the working directory, then in
    the installed package (a wheel ships the configs as ``tme_abm/configs``), then under
    the source tree (an editable install or a checkout)."""
    package = Path(__file__).resolve().parents[2]
    dirs = [root / EXPERIMENTS_DIR for root in (Path.cwd(), package, package.parent)]
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


def arm_names(spec: SweepSpec, exp: ExperimentConfig | None = None) -> list[str]:
    """The experiment's arm names, or (no names given, or a plain sweep) each point's
    swept values, ``key=value, ...`` by the last part of each key."""
    points = design_points(spec)
    if exp is not None and exp.arms:
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

