"""Experiments: the review's claims as runnable sweeps with a question, named arms, an
analysis and the direction the review expects (``tme-abm experiment NAME [--quick]``).

An experiment is a sweep spec under ``configs/experiments/`` with an ``experiment:``
block. Running it runs the sweep (Dask, finished runs skipped) and then writes, under
``OUT/experiment/``: per-arm statistics with 95% intervals (``arms.csv``), every arm
against the reference arm (``comparisons.csv``: Fisher's exact test for rates,
Mann-Whitney U for continuous outcomes), the expected directions with the measured
verdict (``expectations.csv``), time courses per arm (``timecourse.csv``), the runs with
their arms (``runs.csv``) and a ``report.md`` for docs/validation.md. The ``surrogate``
analysis adds ROC AUCs of two predictors of durable response with bootstrap intervals
(``auc.csv``). The figures are drawn from these files by
:func:`tme_abm.viz.study_figures.experiment_figures` (the CLI does both).
``--quick`` runs the block's ``quick`` variant (fewer replicates, a smaller, shorter
lattice) into its own folder; it checks the pipeline, not the biology.
"""

from __future__ import annotations

from pathlib import Path

from ..sweep import run_spec
from .analysis import analyse
from .spec import available, experiment_config, find, load

__all__ = ["analyse", "available", "experiment_config", "find", "load", "run_experiment"]


def run_experiment(name, out=None, *, quick: bool = False, workers: int | None = None,
                   scheduler: str | None = None, gpus: list[int] | None = None, progress: bool = True,
                   batch: int | None = None) -> dict:
    """Run (or finish) an experiment's sweep and write its analysis (no figures); returns
    what was written by name plus ``out`` and ``failed`` (runs that did not complete)."""
    spec, base, exp, _ = load(name, quick)
    out = Path(out) if out is not None else Path("runs") / "experiments" / spec.name
    table = run_spec(spec, base, out, workers=workers, scheduler=scheduler, gpus=gpus, progress=progress,
                     batch=batch)
    written = analyse(out)
    written["out"] = out
    written["failed"] = int((table["status"] != "complete").sum())
    return written

