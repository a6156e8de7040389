"""The ``tme-abm`` command line."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from .config import ConfigError, accuracy_warnings, load_config
from .engine.backend import BACKEND_CHOICES, BackendError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tme_abm: agent-based tumor microenvironment simulator under CAR T therapy.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (speed figures for reports).")
app.add_typer(bench_app, name="bench")


EXTRAS = {"matplotlib": "report", "dask": "sweeps", "distributed": "sweeps", "SALib": "sweeps"}
"""Top-level modules of the optional extras, and the extra that installs each."""


@contextmanager
def _needs_extras(command: str):
    """Import a command's modules inside this block: a missing optional extra is a one-line
    error naming the extra to install, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        _fail(f"tme-abm {command} needs the {EXTRAS[top]!r} extra ({top} is not installed): "
              f"pip install 'tme-abm[{EXTRAS[top]}]'")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None, backend: str | None = None,
          seed: int | None = None):
    extra = list(overrides or [])
    if backend is not None:
        if backend not in BACKEND_CHOICES:
            _fail(f"--backend {backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
        extra.append(f"backend={backend}")
    if seed is not None:
        extra.append(f"seed={seed}")
    try:
        return load_config(config, extra)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config file"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run file (default runs/<name>.h5)"),
    backend: str | None = typer.Option(None, help="auto | numpy | cupy (overrides the config)"),
    seed: int | None = typer.Option(None, help="random seed (overrides the config)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key: --set fields.oxygen.decay_per_min=0.2"),
    overwrite: bool = typer.Option(False, help="replace an existing run file"),
    resume: Path | None = typer.Option(None, help="continue this interrupted run file from its last checkpoint "
                                                     "(same config and options as the first run)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run one config and write an HDF5 run file."""
    from .io import RunFileError
    from .io import run as run_config

    cfg = _load(config, set_, backend, seed)
    for w in accuracy_warnings(cfg):
        typer.echo(f"warning: {w}", err=True)
    if resume is not None and (out is not None or overwrite):
        _fail("--resume PATH continues PATH in place; it cannot be combined with --out or --overwrite")
    try:
        path = run_config(cfg, resume if resume is not None else out, overwrite=overwrite, quiet=quiet,
                          resume=resume is not None)
    except (ConfigError, BackendError, RunFileError) as exc:
        _fail(str(exc))
    except FileExistsError as exc:
        _fail(str(exc), 1)
    typer.echo(str(path))


@app.command()
def summarize(
    run_file: Path = typer.Argument(..., metavar="RUN", help="run file (.h5)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Print a run's status and outcomes."""
    from .io import RunFileError
    from .io.readers import open_run, summary_text

    try:
        r = open_run(run_file)
        info = r.summary()
    except RunFileError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(info, indent=2, default=float) if as_json else summary_text(info))


@app.command()
def report(
    run_file: Path = typer.Argument(..., metavar="RUN", help="run file (.h5)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="folder for the figures (default <RUN>_report/)"),
    days: list[float] | None = typer.Option(None, "--day", help="snapshot day to show (repeatable; default "
                                                                   "first, middle, last)"),
) -> None:
    """Write PNG figures and an HTML and text summary of a run."""
    from .io import RunFileError

    with _needs_extras("report"):
        from .viz.report import write_report

    folder = out if out is not None else run_file.with_name(run_file.stem + "_report")
    try:
        written = write_report(run_file, folder, days=days)
    except RunFileError as exc:
        _fail(str(exc))
    for p in written:
        typer.echo(str(p))


@app.command()
def validate(
    config: Path = typer.Argument(..., help="YAML config file"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key, as for run"),
) -> None:
    """Check a config; exit 0 if valid, non-zero with the problems otherwise."""
    from .config import check_memory, memory_estimate_bytes
    from .engine.backend import host_available_memory_bytes

    cfg = _load(config, set_)
    try:
        check_memory(cfg, host_available_memory_bytes())
    except ConfigError as exc:
        _fail(str(exc))
    for w in accuracy_warnings(cfg):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(
        f"{config}: valid ({cfg.lattice.dims}D {cfg.lattice.shape}, {len(cfg.enabled_fields)} fields, "
        f"{cfg.time.n_ticks} ticks, ~{memory_estimate_bytes(cfg) / 2**20:.1f} MiB)"
    )


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="sweep spec (YAML, e.g. configs/sweeps/burden.yaml)"),
    out: Path = typer.Option(..., "--out", "-o", help="sweep folder: runs/, outcomes.csv, sweep.yaml"),
    workers: int | None = typer.Option(None, min=1, help="local worker processes (default 1)"),
    scheduler: str | None = typer.Option(None, help="address of a running Dask scheduler, e.g. tcp://host:8786"),
    gpus: str | None = typer.Option(None, help="one worker per listed GPU, e.g. --gpus 0,1,2,3"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key of every run"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run every (point, replicate) of a sweep on Dask; finished runs are skipped."""
    with _needs_extras("sweep"):
        from .studies.sweep import SweepError, run_sweep

    try:
        table = run_sweep(spec, out, workers=workers, scheduler=scheduler, gpus=_gpu_ids(gpus), extra_set=set_,
                          progress=not quiet and sys.stderr.isatty())
    except SweepError as exc:
        _fail(str(exc))
    failed = int((table["status"] != "complete").sum())
    ran = int(table["ran"].sum()) if "ran" in table else 0
    typer.echo(f"{out}: {len(table)} runs, {failed} failed, {ran} run now; table {out / 'outcomes.csv'}")
    if failed:
        raise typer.Exit(1)


@app.command("sweep-summary")
def sweep_summary(
    folder: Path = typer.Argument(..., metavar="DIR", help="sweep folder written by tme-abm sweep"),
) -> None:
    """Per-point statistics, figures and (Morris/Sobol) sensitivity indices of a sweep."""
    with _needs_extras("sweep-summary"):
        from .studies.summary import summarize_sweep
        from .studies.sweep import SweepError
        from .viz.study_figures import sweep_figures

    try:
        written = summarize_sweep(folder)
    except SweepError as exc:
        _fail(str(exc))
    written.update(sweep_figures(folder))
    for p in written.values():
        typer.echo(str(p))


@app.command()
def experiment(
    name: str | None = typer.Argument(None, help="experiment name (configs/experiments/NAME.yaml) or spec file"),
    quick: bool = typer.Option(False, help="the small variant (minutes on a laptop; checks the pipeline)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="folder (default runs/experiments/NAME[-quick])"),
    workers: int | None = typer.Option(None, min=1, help="local worker processes (default 1)"),
    scheduler: str | None = typer.Option(None, help="address of a running Dask scheduler"),
    gpus: str | None = typer.Option(None, help="one worker per listed GPU, e.g. --gpus 0,1"),
    list_: bool = typer.Option(False, "--list", help="list the experiments and their questions"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run one experiment (a sweep with a question and expected directions) and write its
    table, figures and report under OUT/experiment/."""
    with _needs_extras("experiment"):
        from .studies.experiments import available, experiment_config, find, run_experiment
        from .studies.sweep import SweepError, load_spec
        from .viz.study_figures import experiment_figures

    if list_ or name is None:
        for n in available():
            try:
                path = find(n)
                q = experiment_config(load_spec(path)[0], path).question
            except SweepError as exc:
                q = f"(invalid: {exc})"
            typer.echo(f"{n}: {' '.join(q.split())}")
        return
    try:
        written = run_experiment(name, out, quick=quick, workers=workers, scheduler=scheduler,
                                 gpus=_gpu_ids(gpus), progress=not quiet and sys.stderr.isatty())
    except SweepError as exc:
        _fail(str(exc))
    experiment_figures(written["out"])
    for key in ("arms", "expectations", "report"):
        typer.echo(str(written[key]))
    if written["failed"]:
        typer.echo(f"error: {written['failed']} runs failed (see {written['out'] / 'outcomes.csv'})", err=True)
        raise typer.Exit(1)


def _gpu_ids(gpus: str | None) -> list | None:
    if gpus is None:
        return None
    try:
        return [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        _fail(f"--gpus {gpus!r}: expected device numbers, e.g. --gpus 0,1")


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        _fail(f"--shape {text!r}: expected 2 or 3 integers, e.g. --shape 200 200 200")
    if len(shape) not in (2, 3) or min(shape) < 1:
        _fail(f"--shape {text!r}: expected 2 or 3 positive integers")
    return shape


@bench_app.command("diffusion")
def bench_diffusion_cmd(
    shape: str = typer.Option("200 200 200", help="lattice shape: 2 or 3 integers (200 200 200 or 200x200x200)"),
    fields: int = typer.Option(4, min=1, help="number of fields"),
    dtype: str = typer.Option("float32", help="float32 | float64"),
    backend: str = typer.Option("auto", help="auto | numpy | cupy"),
    repeats: int = typer.Option(5, min=1, help="timed steps (median reported)"),
    warmup: int = typer.Option(2, min=0, help="untimed steps first"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Voxel-field updates per second of one LOD diffusion step."""
    from .bench import bench_diffusion

    if dtype not in ("float32", "float64"):
        _fail(f"--dtype {dtype!r} is not one of float32, float64")
    try:
        res = bench_diffusion(_parse_shape(shape), fields, dtype, backend, repeats=repeats, warmup=warmup)
    except BackendError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(
            f"diffusion {'x'.join(map(str, res['shape']))} x {fields} fields {dtype} on {res['backend']} "
            f"({res['device']}): {res['median_step_s'] * 1e3:.1f} ms/step, "
            f"{res['voxel_field_updates_per_s']:.3g} voxel-field updates/s"
        )


@bench_app.command("model")
def bench_model_cmd(
    config: Path = typer.Argument(..., help="YAML config file"),
    days: float | None = typer.Option(None, help="simulate only this many days"),
    backend: str | None = typer.Option(None, help="auto | numpy | cupy (overrides the config)"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a key: --set lattice.shape=[400,400]"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Agent-updates per second and wall time per simulated day of a whole model run."""
    from .bench import bench_model

    extra = list(set_ or [])
    if days is not None:
        extra.append(f"time.duration_days={days}")
    cfg = _load(config, extra, backend)  # clear errors for a bad config
    try:
        res = bench_model(cfg)
    except (ConfigError, BackendError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res))
        return
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in res["stage_seconds"].items())
    typer.echo(
        f"model {config} on {res['backend']} ({res['device']}), lattice {'x'.join(map(str, res['lattice']))}: "
        f"{res['simulated_days']:.2f} days in {res['wall_s']:.1f} s ({res['wall_s_per_simulated_day']:.2f} s/day), "
        f"{res['agent_updates_per_s']:.3g} agent-updates/s overall, {res['agent_updates_per_agent_s']:.3g} in the "
        f"agent stages (max {res['max_cells']} cells)\n  stages: {stages}"
    )


def _join_shape_args(argv: list[str]) -> list[str]:
    """Let ``--shape 200 200 200`` work: join the integers that follow --shape."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--shape":
            vals = []
            while i + 1 < len(argv) and argv[i + 1].isdigit():
                vals.append(argv[i + 1])
                i += 1
            if vals:
                out.append(",".join(vals))
        i += 1
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    app(args=_join_shape_args(sys.argv[1:]), prog_name="tme-abm")


if __name__ == "__main__":
    main()
