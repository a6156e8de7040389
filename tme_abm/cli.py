"""The ``tme-abm`` command line."""

from __future__ import annotations

import os

# One thread for BLAS and OpenMP in every command, set where the process starts, before
# NumPy loads its BLAS: the model's linear algebra is small (4 x 4 matrices), where a
# second thread only spins (it cost 2.7x a run's CPU); Dask workers inherit it.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402 - after the thread settings above
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import typer  # noqa: E402

from .version import __version__  # noqa: E402

# Nothing else of tme_abm (NumPy, pydantic, h5py) is imported here: each command imports
# what it needs, so `tme-abm --version` and `--help` start in about 0.1 s of CPU.
BACKEND_CHOICES = ("auto", "numpy", "cupy")
"""The --backend values (tme_abm.engine.backend.BACKEND_CHOICES, checked equal by the tests)."""

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="tme_abm: agent-based tumor microenvironment simulator under CAR T therapy.")
bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks (speed figures for reports).")
app.add_typer(bench_app, name="bench")

EXTRAS = {"matplotlib": "report", "dask": "sweeps", "distributed": "sweeps", "SALib": "sweeps", "sklearn": "sweeps",
          "solara": "view", "uvicorn": "view", "altair": "view", "networkx": "view"}
"""Top-level modules of the optional extras, and the extra that installs each."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tme-abm {__version__}")
        raise typer.Exit()


_DEBUG = {"traceback": False}
"""Set by ``--debug``: an unexpected error shows its traceback (read by :func:`main`)."""


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="say more (e.g. the backend that backend auto chose)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """tme_abm: agent-based tumor microenvironment simulator under CAR T therapy."""
    _DEBUG["traceback"] = debug
    if verbose:
        logging.getLogger().setLevel(logging.INFO)


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


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _overrides(set_: list[str] | None, backend: str | None = None, seed: int | None = None,
               days: float | None = None) -> tuple[list[str], list[str]]:
    """The command line's config overrides as ``KEY=VALUE`` items, and what the user typed
    for each (so an error names the option, not the config file)."""
    items, labels = [], []
    for s in set_ or []:
        items.append(s)
        labels.append(f"--set {s}")
    if backend is not None:
        if backend not in BACKEND_CHOICES:
            _fail(f"--backend {backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
        items.append(f"backend={backend}")
        labels.append(f"--backend {backend}")
    if seed is not None:
        items.append(f"seed={seed}")
        labels.append(f"--seed {seed}")
    if days is not None:
        items.append(f"time.duration_days={days}")
        labels.append(f"--days {days}")
    return items, labels


def _load(config: Path, set_: list[str] | None, backend: str | None = None, seed: int | None = None,
          days: float | None = None):
    """The config file ``config`` (or the shipped config of that name) with the command
    line's overrides, validated; a problem is a one-line error."""
    from .config import ConfigError, load_config
    from .config.shipped import find_config

    items, labels = _overrides(set_, backend, seed, days)
    try:
        return load_config(find_config(config), items, labels)
    except ConfigError as exc:
        _fail(str(exc))


CONFIG = typer.Argument(..., metavar="CONFIG", help="YAML config file, or the name of a shipped config "
                                                    "(tme-abm configs lists them)")
SET = typer.Option(None, "--set", metavar="KEY=VALUE", help="override a config key, e.g. --set seed=3 "
                                                             "(repeatable; the value is YAML)")
BACKEND = typer.Option(None, metavar="auto|numpy|cupy", help="array backend (overrides the config)")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress bar")
WORKERS = typer.Option(None, min=1, metavar="N", help="local worker processes (default 1)")
SCHEDULER = typer.Option(None, metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
GPUS = typer.Option(None, metavar="IDS", help="one worker per listed GPU, e.g. --gpus 0,1 (the cuda12 extra)")
BATCH = typer.Option(None, "--batch", min=1, metavar="N", help="replicates of a point run together in one model "
                     "(default: all of them on GPU workers, at most 8 on CPU)")


@app.command()
def run(
    config: Path = CONFIG,
    out: Path | None = typer.Option(None, "--out", "-o", metavar="PATH", help="run file (default runs/<name>.h5); "
                                    "with --replicates, the folder of the replicates' files (default runs/<name>/)"),
    backend: str | None = BACKEND,
    seed: int | None = typer.Option(None, metavar="N", help="random seed (overrides the config)"),
    set_: list[str] | None = SET,
    replicates: int = typer.Option(1, "--replicates", "-r", min=1, metavar="R",
                                   help="run R replicates (seeds seed, seed + 1, ...) in one batch, stepped "
                                        "together, each to <out>/<name>_r<r>.h5"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run file once this run completes"),
    resume: Path | None = typer.Option(None, metavar="PATH", help="continue this interrupted run file (with "
                                                                  "--replicates, this folder of them) with the same "
                                                                  "config and options as the first run"),
    quiet: bool = QUIET,
) -> None:
    """Run one config (or a batch of replicates of it) and write HDF5 run files."""
    from .config import ConfigError, accuracy_warnings
    from .engine.backend import BackendError
    from .io import RunFileError, default_output_path
    from .io.lock import LockedError
    from .io.runfile import DiskFullError
    from .io.runner import RunTerminated, pending_path, replicates_of, run_batch

    cfg = _load(config, set_, backend, seed)
    for w in accuracy_warnings(cfg):
        typer.echo(f"warning: {w}", err=True)
    if resume is not None and (out is not None or overwrite):
        _fail("--resume PATH continues PATH in place; it cannot be combined with --out or --overwrite")
    if replicates == 1:
        target = resume or out or default_output_path(cfg)
        if resume is not None and resume.is_dir():
            _fail(f"--resume {resume}: is a folder; to continue a batch of replicates, give --replicates R as "
                  f"when it was started")
        cfgs, paths = [cfg], [target]
    else:
        target = resume or out or Path("runs") / cfg.name
        if target.exists() and not target.is_dir():
            _fail(f"{target}: is a file; with --replicates, --out names a folder for the replicates' run files")
        cfgs, paths = replicates_of(cfg, replicates, target)
        target.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["tme-abm", "run", str(config), *(a for s in set_ or [] for a in ("--set", s)),
                          *(["--seed", str(seed)] if seed is not None else []),
                          *(["--backend", backend] if backend is not None else []),
                          *(["--replicates", str(replicates)] if replicates > 1 else []), "--resume", str(target)])
    try:
        run_batch(cfgs, paths, overwrite=overwrite, quiet=quiet, resume=resume is not None)
    except DiskFullError as exc:
        _fail(f"{exc} with: {command}" if exc.resumable else str(exc), 1)
    except (ConfigError, BackendError, RunFileError, LockedError) as exc:
        _fail(str(exc))
    except FileExistsError as exc:
        _fail(str(exc), 1)
    except (KeyboardInterrupt, RunTerminated) as exc:
        # exit status 128 + the signal, as a shell reports it
        what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, RunTerminated) else ("interrupted (Ctrl-C)", 130)
        if not any(p.exists() or pending_path(p).exists() for p in paths):
            _fail(f"{what} before {target} was written", code)
        files = "the run file records status failed; continue it" if replicates == 1 else \
            "the replicates' run files record status failed; continue them"
        _fail(f"{what}: {files} with: {command}", code)
    typer.echo(str(target))


@app.command()
def summarize(
    run_file: Path = typer.Argument(..., metavar="RUN", help="run file (.h5), or a folder of runs: their "
                                                             "patient-level calibration table"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (NaN and infinity as null)"),
) -> None:
    """Print a run's status and outcomes, or the calibration across a folder of runs."""
    from .io import RunFileError, open_run
    from .studies.measures import calibration_table, summarize_run

    try:
        if run_file.is_dir():
            table = calibration_table(run_file)
            info = table.to_dict(orient="records")
            text = table.to_string(index=False, float_format=lambda v: f"{v:.3g}")
            for path, reason in table.attrs["skipped"]:
                typer.echo(f"note: skipped {path}: {reason.removeprefix(path + ': ')}", err=True)
        else:
            info, text = summarize_run(open_run(run_file))
    except RunFileError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(_json_safe(info), indent=2, allow_nan=False) if as_json else text)


def _json_safe(value):
    """``value`` with NaN and infinities as null (JSON has neither), NumPy scalars as numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@app.command()
def report(
    run_file: Path = typer.Argument(..., metavar="RUN", help="run file (.h5)"),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR",
                                    help="folder for the figures (default <RUN>_report/)"),
    days: list[float] | None = typer.Option(None, "--day", metavar="DAY", help="snapshot day to show (repeatable; "
                                                                                "default first, middle, last)"),
) -> None:
    """Write PNG figures and an HTML and text summary of a run."""
    from .io import RunFileError

    with _needs_extras("report"):
        from .viz.report import ReportError, write_report

    folder = out if out is not None else run_file.with_name(run_file.stem + "_report")
    try:
        written = write_report(run_file, folder, days=days)
    except (RunFileError, ReportError) as exc:
        _fail(str(exc))
    for p in written:
        typer.echo(str(p))


@app.command()
def view(
    path: Path | None = typer.Argument(None, metavar="PATH", help="a run file, or a folder of runs, a sweep or an "
                                                                 "experiment; nothing outside it can be opened"),
    live: Path | None = typer.Option(None, "--live", metavar="CONFIG", help="show a live model of this config instead"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (anything but localhost prints a "
                                                          "warning: the page reads files and runs models)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="port (0: a free one)"),
) -> None:
    """Serve a web view of a run, a folder of runs or a live model, and print its address."""
    with _needs_extras("view"):
        from .viz.web.server import free_port, serve

    if (path is None) == (live is None):
        _fail("give a PATH to view or --live CONFIG, not both")
    if live is not None:
        from .config import ConfigError
        from .config.shipped import find_config

        try:
            live = find_config(live)
        except ConfigError as exc:
            _fail(str(exc))
    target = path if path is not None else live
    if not target.exists():
        _fail(f"{target}: no such {'file or folder' if path is not None else 'config'}")
    if live is not None:
        _load(live, None)  # a config error is one line now, not a broken page later
    serve(path, live, host, port or free_port(host))


@app.command()
def validate(
    config: Path = typer.Argument(..., metavar="FILE", help="a config (a file, or a shipped config's name), or a "
                                                            "sweep or experiment spec"),
    set_: list[str] | None = SET,
) -> None:
    """Check a config, or a sweep or experiment spec (every point's config); exit 0 if
    valid, non-zero with the problem otherwise."""
    from .config import ConfigError, accuracy_warnings, check_memory, memory_estimate_bytes, read_yaml
    from .config.shipped import find_calibration, find_config
    from .engine.backend import host_available_memory_bytes, make_backend
    from .model import TMEModel

    try:
        path = find_config(config)
    except ConfigError as exc:
        try:  # a shipped calibration spec by name (tme-abm validate heme_cd19)
            path = find_calibration(config)
        except ConfigError:
            _fail(str(exc))
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        _fail(str(exc))
    if "design" in data or "experiment" in data:  # the keys a spec has and a config does not
        _validate_spec(path, set_)
        return
    if "targets" in data:  # a calibration spec
        with _needs_extras("validate"):
            from .studies.calibration import load_calibration
            from .studies.sweep import SweepError
        try:
            cal, base = load_calibration(path)
        except SweepError as exc:
            _fail(str(exc))
        m = cal.method
        typer.echo(f"{path}: valid calibration spec ({len(cal.parameters)} parameters, {len(cal.targets)} targets; "
                   f"{m.waves} waves x {m.points} points x {m.replicates} replicates, config {base.name})")
        return
    cfg = _load(path, set_)
    try:
        check_memory(cfg, host_available_memory_bytes())
        # building the model places the initial cells, which can fail only then
        TMEModel(cfg, backend=make_backend("numpy", cfg.dtype)).fields.solver.close()
    except ConfigError as exc:
        _fail(str(exc))
    for w in accuracy_warnings(cfg):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(
        f"{config}: valid ({cfg.lattice.dims}D {cfg.lattice.shape}, {len(cfg.enabled_fields)} fields, "
        f"{cfg.time.n_ticks} ticks, ~{memory_estimate_bytes(cfg) / 2**20:.1f} MiB)"
    )


def _validate_spec(path: Path, set_: list[str] | None) -> None:
    """``tme-abm validate`` of a sweep or experiment spec: the spec, its experiment block,
    and the base config with each design point."""
    from .config import ConfigError, load_config

    with _needs_extras("validate"):
        from .studies.experiments import experiment_config
        from .studies.sweep import SweepError, design_points, load_spec, task_overrides

    try:
        spec, base = load_spec(path, extra_set=set_)
        if spec.experiment is not None:
            experiment_config(spec, path)
        points = design_points(spec)
        for i, point in enumerate(points):
            try:
                load_config(base, task_overrides(spec, point))
            except ConfigError as exc:
                raise SweepError(f"{path}: design point {i} ({point}) does not validate: {exc}") from None
    except SweepError as exc:
        _fail(str(exc))
    kind = "experiment" if spec.experiment is not None else "sweep"
    typer.echo(f"{path}: valid {kind} spec ({len(points)} points x {spec.replicates} replicates, base {base.name})")


@app.command()
def configs() -> None:
    """List the shipped configs (run one by name: tme-abm run NAME) and the experiments."""
    from .config.shipped import describe, shipped_configs

    for name, path in shipped_configs().items():
        typer.echo(f"{name}: {describe(path)}")
    typer.echo("experiments: tme-abm experiment --list")


@app.command()
def sweep(
    spec: Path = typer.Argument(..., metavar="SPEC", help="sweep spec (YAML, e.g. configs/sweeps/burden.yaml)"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="sweep folder: runs/, outcomes.csv, sweep.yaml"),
    workers: int | None = WORKERS,
    scheduler: str | None = SCHEDULER,
    gpus: str | None = GPUS,
    batch: int | None = BATCH,
    set_: list[str] | None = SET,
    quiet: bool = QUIET,
) -> None:
    """Run every (point, replicate) of a sweep on Dask; finished runs are skipped."""
    with _needs_extras("sweep"):
        from .studies.sweep import SweepError, run_sweep

    try:
        table = run_sweep(spec, out, _executor(workers, scheduler, gpus, batch, quiet), extra_set=set_)
    except SweepError as exc:
        _fail(str(exc))
    failed = int((table["status"] != "complete").sum())
    ran = int(table["ran"].sum()) if "ran" in table else 0
    typer.echo(f"{out}: {len(table)} runs, {failed} failed, {ran} run now; table {out / 'outcomes.csv'}")
    if failed:
        raise typer.Exit(1)


@app.command()
def calibrate(
    spec: str = typer.Argument(..., metavar="SPEC", help="calibration spec: a file, or a shipped one's name "
                                                         "(configs/calibration/NAME.yaml)"),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR",
                                    help="folder (default runs/calibration/NAME); a rerun continues it"),
    workers: int | None = WORKERS,
    scheduler: str | None = SCHEDULER,
    gpus: str | None = GPUS,
    batch: int | None = BATCH,
    adopt: bool = typer.Option(False, "--adopt", help="write the chosen parameters into the defaults "
                                                      "(biology/data/parameters.csv) with their provenance, if every "
                                                      "target is within its tolerance"),
    quiet: bool = QUIET,
) -> None:
    """Calibrate a config's free parameters to declared targets by history matching
    (docs/calibration.md): waves of batched runs, the chosen point confirmed, a report."""
    from .config import ConfigError
    from .config.shipped import find_calibration

    with _needs_extras("calibrate"):
        from .studies.calibration import adopt as adopt_chosen
        from .studies.calibration import calibrate as run_calibration
        from .studies.sweep import SweepError

    try:
        path = find_calibration(spec)
        folder = out or Path("runs") / "calibration" / path.stem
        doc = run_calibration(path, folder, _executor(workers, scheduler, gpus, batch, quiet))
        for name, t in doc["targets"].items():
            typer.echo(f"{name}: {t['confirmed']:.4g} (target {t['target']:g} +/- {t['tolerance']:g}) "
                       f"{'within' if t['within'] else 'MISSED'}")
        typer.echo(f"{folder}: chosen {', '.join(f'{k}={v:.4g}' for k, v in doc['parameters'].items())}; "
                   f"report {folder / 'report.md'}")
        if adopt:
            keys = adopt_chosen(folder)
            typer.echo(f"adopted as defaults: {', '.join(keys)}")
    except (SweepError, ConfigError) as exc:
        _fail(str(exc))
    if not doc["all_within"]:
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
    name: str | None = typer.Argument(None, metavar="NAME", help="experiment name (configs/experiments/NAME.yaml) "
                                                                  "or spec file"),
    quick: bool = typer.Option(False, "--quick", help="the small variant (minutes on a laptop; checks the pipeline)"),
    replicates: int | None = typer.Option(None, "--replicates", "-n", metavar="N",
                                          help="replicates per arm (default the spec's); a larger N grows the "
                                               "ensemble in the same folder, running only the new replicates"),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR",
                                    help="folder (default runs/experiments/NAME[-quick])"),
    workers: int | None = WORKERS,
    scheduler: str | None = SCHEDULER,
    gpus: str | None = GPUS,
    batch: int | None = BATCH,
    list_: bool = typer.Option(False, "--list", help="list the experiments and their questions"),
    quiet: bool = QUIET,
) -> None:
    """Run one experiment and write its tables, figures and report under OUT/experiment/.

    An experiment is a sweep with a question, named arms and the directions the review
    expects (docs/sweeps.md)."""
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
        written = run_experiment(name, out, _executor(workers, scheduler, gpus, batch, quiet), quick=quick,
                                 replicates=replicates)
    except SweepError as exc:
        _fail(str(exc))
    experiment_figures(written["out"])
    for key in ("arms", "expectations", "report"):
        typer.echo(str(written[key]))
    if written["failed"]:
        typer.echo(f"error: {written['failed']} runs failed (see {written['out'] / 'outcomes.csv'})", err=True)
        raise typer.Exit(1)


def _executor(workers: int | None, scheduler: str | None, gpus: str | None, batch: int | None, quiet: bool):
    """The studies' Executor from the command line's options (a progress bar on a terminal)."""
    from .studies.sweep import Executor

    ids = None
    if gpus is not None:
        try:
            ids = tuple(int(g) for g in gpus.split(",") if g.strip())
        except ValueError:
            _fail(f"--gpus {gpus!r}: expected device numbers, e.g. --gpus 0,1")
    return Executor(workers=workers, scheduler=scheduler, gpus=ids, progress=not quiet and sys.stderr.isatty(),
                    batch=batch)


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
    shape: str = typer.Option("200 200 200", metavar="NZ NY NX",
                              help="lattice shape: 2 or 3 integers (200 200 200 or 200x200x200)"),
    fields: int = typer.Option(4, min=1, metavar="N", help="number of fields"),
    dtype: str = typer.Option("float32", metavar="float32|float64", help="field dtype"),
    backend: str = typer.Option("auto", metavar="auto|numpy|cupy", help="array backend"),
    repeats: int = typer.Option(5, min=1, metavar="N", help="timed steps (median reported)"),
    warmup: int = typer.Option(2, min=0, metavar="N", help="untimed steps first"),
    scheme: str = typer.Option("lod", metavar="lod|steady|implicit", help="field scheme"),
    reference: bool = typer.Option(False, "--reference", help="also time a straightforward NumPy LOD step in the "
                                   "same run and print the ratio (scheme lod)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Voxel-field updates per second of one field step (LOD, steady or implicit)."""
    from .bench import bench_diffusion
    from .engine.backend import BackendError

    if dtype not in ("float32", "float64"):
        _fail(f"--dtype {dtype!r} is not one of float32, float64")
    if scheme not in ("lod", "steady", "implicit"):
        _fail(f"--scheme {scheme!r} is not one of lod, steady, implicit")
    if reference and scheme != "lod":
        _fail(f"--reference times an LOD step: use it with --scheme lod, not {scheme}")
    try:
        res = bench_diffusion(_parse_shape(shape), fields, dtype, backend, repeats=repeats, warmup=warmup,
                              scheme=scheme, reference=reference)
    except BackendError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(
            f"diffusion ({scheme}) {'x'.join(map(str, res['shape']))} x {fields} fields {dtype} on {res['backend']} "
            f"({res['device']}): {res['median_step_s'] * 1e3:.1f} ms/step, "
            f"{res['voxel_field_updates_per_s']:.3g} voxel-field updates/s"
            + (f"; a straightforward NumPy LOD step {res['reference_step_s'] * 1e3:.1f} ms: "
               f"{res['speedup_vs_reference']:.2f}x" if reference else "")
        )


@bench_app.command("model")
def bench_model_cmd(
    config: Path = CONFIG,
    days: float | None = typer.Option(None, metavar="DAYS", help="simulate only this many days"),
    backend: str | None = BACKEND,
    set_: list[str] | None = SET,
    replicates: int = typer.Option(1, "--replicates", "-r", min=1, metavar="R",
                                   help="also time a batch of R replicates and print the wall time per replicate "
                                        "against the single run's"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Agent-updates per second and wall time per simulated day of a whole model run."""
    from .bench import bench_model
    from .config import ConfigError
    from .engine.backend import BackendError

    cfg = _load(config, set_, backend, days=days)
    try:
        res = bench_model(cfg, replicates)
    except (ConfigError, BackendError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res))
        return
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in res["stage_seconds"].items())
    typer.echo(
        f"model {config} on {res['backend']} ({res['device']}), lattice {'x'.join(map(str, res['lattice']))}: "
        f"{res['simulated_days']:.2f} days in {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU "
        f"({res['wall_s_per_simulated_day']:.2f} and {res['cpu_s_per_simulated_day']:.2f} s/day; warm-up, which "
        f"loads or compiles the kernels, {res['warm_up_s']:.1f} s), "
        f"{res['agent_updates_per_s']:.3g} agent-updates/s overall, {res['agent_updates_per_agent_s']:.3g} in the "
        f"agent stages (max {res['max_cells']} cells), {res['host_copies_per_tick']:.1f} host copies per tick"
        f"\n  stages: {stages}"
    )
    if replicates > 1:
        b = res["batch"]
        typer.echo(f"  batch of {replicates} replicates: {b['wall_s']:.1f} s wall, {b['cpu_s']:.1f} s CPU; per "
                   f"replicate {b['wall_s_per_replicate']:.2f} s wall, {b['cpu_s_per_replicate']:.2f} s CPU "
                   f"({b['cpu_s_per_replicate_day']:.3f} CPU-s per replicate-day) against {res['wall_s']:.2f} and "
                   f"{res['cpu_s']:.2f} s for the single run: speedup {res['speedup']:.2f}x wall, "
                   f"{res['cpu_speedup']:.2f}x CPU, {b['agent_updates_per_s']:.3g} agent-updates/s")


@bench_app.command("fields")
def bench_fields_cmd(
    config: Path = CONFIG,
    ticks: int = typer.Option(240, min=0, metavar="N", help="ticks to run before the comparison"),
    set_: list[str] | None = SET,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Accuracy of each field after one field solve against a converged reference."""
    from .bench import field_accuracy
    from .config import ConfigError
    from .engine.backend import BackendError

    cfg = _load(config, [*(set_ or []), "dtype=float64", "backend=numpy"], None)
    try:
        res = field_accuracy(cfg, ticks)
    except (ConfigError, BackendError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"fields of {config} at tick {ticks}, one {res['interval_min']:g}-min solve; largest deviation from "
               f"the converged reference, % of the field's scale")
    for name, r in res["fields"].items():
        errs = ", ".join(f"{k} {v * 100:.3f}%" for k, v in r["error"].items())
        typer.echo(f"  {name:<10} scale {r['scale']:.3g}: {errs}")


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
    argv = _join_shape_args(sys.argv[1:])
    try:
        app(args=argv, prog_name="tme-abm")
    except Exception as exc:  # not a user error the commands know: one line, unless --debug
        if _DEBUG["traceback"]:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (tme-abm --debug ... shows the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
