"""Experiments: the review's claims as pre-registered protocols, runnable as sweeps with a
question, named arms, an assessment day, declared tests with their alpha and a
correction across them (``tme-abm experiment NAME [--quick] [--replicates N]``).

An experiment is a sweep spec under ``configs/experiments/`` with an ``experiment:``
block. Running it runs the sweep (Dask, finished runs skipped), after checking that the
protocol is the one the folder's runs were declared under, and then writes, under
``OUT/experiment/``: per-arm statistics with 95% intervals (``arms.csv``), every arm
against the reference arm (``comparisons.csv``: Fisher's exact test for rates,
Mann-Whitney U for continuous outcomes), the declared expectations with corrected p
values and verdicts, then the exploratory ones (``expectations.csv``), time courses per
arm (``timecourse.csv``), the runs with their arms (``runs.csv``) and a ``report.md`` for
docs/validation.md. The ``surrogate`` analysis adds ROC AUCs of two predictors of
durable response with bootstrap intervals (``auc.csv``). The figures are drawn from
these files by :func:`tme_abm.viz.study_figures.experiment_figures` (the CLI does both).
``--quick`` runs the block's ``quick`` variant (fewer replicates, a smaller, shorter
lattice) into its own folder; it checks the pipeline, not the biology.
"""

from __future__ import annotations

from pathlib import Path

from ..sweep import Executor, read_manifest, run_spec
from .analysis import analyse
from .spec import available, check_protocol, experiment_config, find, load

__all__ = ["analyse", "available", "experiment_config", "find", "load", "run_experiment"]


def run_experiment(name, out=None, executor: Executor = Executor(), *, quick: bool = False,
                   replicates: int | None = None) -> dict:
    """Run (or finish, or grow to ``replicates`` per arm) an experiment's sweep and write
    its analysis (no figures); returns what was written by name plus ``out`` and
    ``failed`` (runs that did not complete). A folder whose runs were declared under
    another protocol is refused before anything runs."""
    spec, base, exp, _ = load(name, quick, replicates)
    out = Path(out) if out is not None else Path("runs") / "experiments" / spec.name
    if (out / "sweep.yaml").exists():
        check_protocol(exp, read_manifest(out), out)
    table = run_spec(spec, base, out, executor)
    written = analyse(out)
    written["out"] = out
    written["failed"] = int((table["status"] != "complete").sum())
    return written

