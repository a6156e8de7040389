"""Run one config to one run file: build the model, step it with its output writers,
record the outcome; resume an interrupted run from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tqdm import tqdm

from ..config import Config, load_yaml, output_estimate_bytes, run_work
from ..config.schema import per_replicate
from ..engine.backend import make_backend
from ..model import TMEModel, set_state
from .lock import WriterLock
from .runfile import MARGIN_BYTES, DiskFullError, RunFile, RunFileError, disk_full, free_bytes, reading
from .writers import output_writers


class RunTerminated(Exception):
    """The run received SIGTERM (e.g. a cluster job reaching its time limit)."""


def default_output_path(cfg: Config) -> Path:
    return Path(cfg.output.path) if cfg.output.path else Path("runs") / f"{cfg.name}.h5"


def pending_path(path: Path) -> Path:
    """Where ``--overwrite`` writes the new run until it completes and replaces ``path``."""
    return path.with_name(f".{path.name}.overwrite")


def run(cfg: Config, out: str | Path | None = None, *, overwrite: bool = False, quiet: bool = False,
        resume: bool = False) -> Path:
    """Run ``cfg`` to completion and return the run file's path.

    The run holds an exclusive lock on its path for its whole life: a second run, resume
    or overwrite of the same path is refused (:class:`~.lock.LockedError` naming the
    holder). With ``overwrite``, an existing file stays untouched until the new run
    completes: the new run is written beside it (:func:`pending_path`) and replaces it
    only then.

    With ``resume``, ``out`` is an existing run file of the same config (status running
    or failed), or the path an interrupted ``--overwrite`` was to replace: the model is
    restored from the latest checkpoint (or built afresh if the run stopped before its
    first one), everything recorded after it is dropped, and the run continues; the
    finished file equals the one an uninterrupted run would have written (same seed and
    backend), bit for bit, apart from wall-clock attributes.

    A failure records status "failed" and the error in the file before re-raising; a run
    whose file was removed or replaced while it ran fails.
    """
    return run_batch([cfg], [Path(out) if out else default_output_path(cfg)], overwrite=overwrite, quiet=quiet,
                     resume=resume)[0]


def replicates_of(cfg: Config, replicates: int, folder: Path) -> tuple[list[Config], list[Path]]:
    """The configs and run files of ``replicates`` replicates of ``cfg``: seeds
    ``cfg.seed + r``, all else equal (so each is the single run of ``cfg`` with that
    seed), in ``folder/<name>_r<r>.h5`` (r from 0, zero-padded to the largest's width)."""
    width = len(str(replicates - 1))
    return ([cfg.model_copy(update={"seed": cfg.seed + r}) for r in range(replicates)],
            [Path(folder) / f"{cfg.name}_r{r:0{width}d}.h5" for r in range(replicates)])


def run_batch(cfgs: list[Config], paths: list[Path], *, overwrite: bool = False, quiet: bool = False,
              resume: bool = False) -> list[Path]:
    """Run replicates of one config in one model, in lockstep (docs/architecture.md, "The
    replicate axis"), each to its own run file, as :func:`run` runs one: ``cfgs`` may
    differ only in ``seed``, ``name``, ``output.path`` and the keys that may differ per
    replicate (:func:`~tme_abm.config.schema.per_replicate`); ``paths[r]`` is replicate r's
    file. Each file equals the one :func:`run` writes for its config, bit for bit (apart
    from wall-clock attributes), and resumes like one: with ``resume``, the replicates
    whose latest checkpoints are at the same tick continue together."""
    paths = [Path(p) for p in paths]
    if len(paths) != len(cfgs) or not cfgs:
        raise ValueError(f"a batch needs one path per config, got {len(cfgs)} configs and {len(paths)} paths")
    if len(set(paths)) != len(paths):
        raise RunFileError(f"a batch writes each replicate to its own file; repeated: "
                           f"{sorted(str(p) for p in paths if paths.count(p) > 1)[0]}")
    replicate_params(cfgs)  # refuses a batch of configs that differ where replicates cannot
    if resume:
        groups: dict = {}
        for i, path in enumerate(paths):
            groups.setdefault(_checkpoint_tick(path), []).append(i)
        if len(groups) > 1:  # a batch killed while writing its checkpoints: resume each tick's replicates
            for idx in groups.values():
                _run_batch([cfgs[i] for i in idx], [paths[i] for i in idx], overwrite, quiet, resume)
            return paths
    _run_batch(cfgs, paths, overwrite, quiet, resume)
    return paths


_OWN = ("seed", "name", "output.path")
"""Keys every replicate of a batch has its own value of."""


def replicate_params(cfgs: list[Config]) -> list[dict] | None:
    """Each replicate's values of the keys in which the configs of a batch differ (besides
    seed, name and output path), for :class:`TMEModel`'s ``params``; None if none differ.
    Raises ValueError naming the keys a batch shares that differ."""
    dumps = [_flat(c.model_dump(mode="json")) for c in cfgs]
    keys = sorted({k for d in dumps[1:] for k in d if k not in _OWN and d.get(k) != dumps[0].get(k)})
    shared = [k for k in keys if not per_replicate(k)]
    if shared:
        raise ValueError(f"replicates of one batch differ in {', '.join(shared[:8])}; a batch runs one config "
                         f"with several seeds and per-replicate parameters")
    return [{k: d[k] for k in keys} for d in dumps] if keys else None


def _checkpoint_tick(path: Path) -> int | None:
    """The tick of ``path``'s latest checkpoint (or of its interrupted ``--overwrite``),
    None if it has none or cannot be read (it starts again)."""
    target = pending_path(path) if pending_path(path).exists() else path
    try:
        with reading(target) as f:
            ck = f["checkpoint"]
            return int(ck.attrs["tick"]) if str(ck.attrs.get("latest", "")) else None
    except (RunFileError, KeyError):
        return None


def _run_batch(cfgs: list[Config], paths: list[Path], overwrite: bool, quiet: bool, resume: bool) -> None:
    cfg = cfgs[0]
    backend = make_backend(cfg.backend, cfg.dtype, run_work(cfg, len(cfgs)))
    for path in paths:
        if path.is_dir():
            raise RunFileError(f"{path}: is a directory; --out names the run file (e.g. {path / (cfg.name + '.h5')})")
    with ExitStack() as stack:
        stop = stack.enter_context(_signals_raise())
        locks = []
        for path in paths:
            lock = WriterLock(path, "another run is writing it", reserve=MARGIN_BYTES)
            try:
                lock.acquire()
            except OSError as exc:
                if disk_full(exc):
                    raise _disk_full(cfgs, paths) from None
                raise RunFileError(f"{path}: cannot write the run file there: {exc.strerror or exc}") from None
            stack.enter_context(lock)
            locks.append(lock)
        targets = [_target(c, path, overwrite, resume) for c, path in zip(cfgs, paths)]
        _check_space(cfgs, targets, resume)
        model = TMEModel(cfg, backend=backend, seeds=[c.seed for c in cfgs], params=replicate_params(cfgs))
        stack.callback(model.fields.solver.close)
        run_files: list[RunFile] = []
        states = []
        try:
            for c, target in zip(cfgs, targets):
                run_file, state = _open(model, c, target, backend, resume)
                run_files.append(run_file)
                states.append(state)
            if all(st is not None for st in states):
                set_state(model, states)
            elif any(st is not None for st in states):
                raise RunFileError(f"{targets[[st is None for st in states].index(True)]}: has no checkpoint "
                                   f"while the other replicates of its batch have one")
            if resume:  # cut each file back to its checkpoint (to nothing if it has none)
                for run_file, state in zip(run_files, states):
                    run_file.rewind(None if state is None else model.time_min,
                                    [] if state is None else state[1]["event_log"])
        except BaseException as exc:
            if disk_full(exc):
                _stop_on_full_disk(run_files, locks, exc)
                raise _disk_full(cfgs, targets) from None
            for run_file in run_files:
                run_file.f.close()
            raise
        inodes = [os.stat(t).st_ino for t in targets]
        t0 = time.perf_counter()
        try:
            _advance(model, run_files, cfgs, quiet, fresh=states[0] is None, stop=stop)
            for r, run_file in enumerate(run_files):
                wall = float(run_file.f.attrs.get("wall_seconds", 0.0)) + time.perf_counter() - t0
                run_file.f.attrs["wall_seconds"] = wall
                run_file.write_outcomes(model.replicas[r].outcomes())
        except BaseException as exc:
            if disk_full(exc):
                _stop_on_full_disk(run_files, locks, exc)
                raise _disk_full(cfgs, targets) from None
            for run_file in run_files:
                run_file.finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        for run_file in run_files:
            run_file.finish("complete")
        for target, path, inode in zip(targets, paths, inodes):
            try:
                still_ours = os.stat(target).st_ino == inode
            except FileNotFoundError:
                still_ours = False
            if not still_ours:
                raise RunFileError(f"{target}: the run file was removed or replaced while the run was writing it; "
                                   f"this run's results are lost")
            if target != path:
                os.replace(target, path)


def _check_space(cfgs: list[Config], targets: list[Path], resume: bool) -> None:
    """Refuse to start (or resume) a run whose files would not fit on their disk."""
    need = _space_needed(cfgs, targets)
    free = free_bytes(targets[0])
    if free < need + MARGIN_BYTES:
        then = "resume it" if resume else "run it again, or write elsewhere (--out)"
        raise DiskFullError(f"{targets[0].parent}: disk full: {free / 2**20:.1f} MiB free, the run needs "
                            f"~{(need + MARGIN_BYTES) / 2**20:.1f} MiB; free space and {then}")


def _space_needed(cfgs: list[Config], targets: list[Path]) -> int:
    """Bytes the run files still need: the estimate less what they already hold."""
    held = sum(t.stat().st_size for t in targets if t.exists())
    return max(output_estimate_bytes(cfgs[0], len(cfgs)) - held, 0)


def _stop_on_full_disk(run_files: list[RunFile], locks: list[WriterLock], exc: BaseException) -> None:
    """Close the run files of a run stopped by a full disk so that each keeps its last
    checkpoint. A write that failed half-way leaves HDF5's cache referencing space that
    was never written, and HDF5 must flush it to leave a consistent file: the locks'
    reserves are released first to give it room. A file that still cannot be closed
    is detached (:meth:`RunFile.detach`)."""
    if not isinstance(exc, DiskFullError):  # the run's own check stops before writing: the margin is there
        for lock in locks:
            lock.release_reserve()
    for run_file in run_files:
        try:
            run_file.finish("failed", f"{type(exc).__name__}: {exc}")
        except Exception:  # any failure to close: the file is left as its last flush
            run_file.detach()


def _disk_full(cfgs: list[Config], targets: list[Path]) -> DiskFullError:
    """The one-line error of a run stopped by a full disk."""
    need = _space_needed(cfgs, targets)
    written = any(t.exists() for t in targets)
    then = ("its files keep the last checkpoint: free space and resume it" if written
            else "nothing was written: free space and run it again")
    return DiskFullError(f"disk full: {free_bytes(targets[0]) / 2**20:.1f} MiB free in {targets[0].parent}, the run "
                         f"needs ~{(need + MARGIN_BYTES) / 2**20:.1f} MiB more; {then}", resumable=written)


def _target(cfg: Config, path: Path, overwrite: bool, resume: bool) -> Path:
    """The file a run of ``path`` writes: the path itself, or, while an existing file is
    overwritten, its :func:`pending_path`."""
    pending = pending_path(path)
    if resume:
        target = pending if pending.exists() else path
        _check_same_config(target, cfg)
        return target
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output file exists; choose another --out, pass --overwrite, "
                              f"or --resume it")
    target = pending if path.exists() else path
    if target == path:  # an overwrite of a file that is gone: its half-written successor is moot
        pending.unlink(missing_ok=True)
    return target


def _open(model: TMEModel, cfg: Config, target: Path, backend, resume: bool):
    """The run file of ``cfg`` (one replicate) and its latest checkpoint: a new file (no
    checkpoint), or ``target`` reopened with its latest checkpoint's state (None if it
    has none yet: the run starts again)."""
    if not resume:
        try:
            run_file = RunFile.create(
                target, config_yaml=cfg.to_yaml(), overwrite=True,
                attrs={"title": f"tme_abm run {cfg.name}", "seed": cfg.seed, "backend": backend.name,
                       "device": backend.device, "dtype": cfg.dtype, "git_commit": _git_commit()},
                lattice_shape=model.lattice.shape, spacing_um=model.lattice.spacing_um,
                field_names=model.fields.names, field_units=model.fields.units, dtype=cfg.dtype)
        except OSError as exc:
            raise RunFileError(f"{target}: cannot write the run file: {exc.strerror or exc}") from None
        return run_file, None
    run_file = RunFile.reopen(target)
    try:
        return run_file, run_file.read_checkpoint()
    except BaseException:
        run_file.f.close()
        raise


def _advance(model: TMEModel, run_files: list[RunFile], cfgs: list[Config], quiet: bool, fresh: bool,
             stop: _Stop) -> None:
    """Step ``model`` from its current tick to the end; after the initial state (when the
    run starts from it) and after every tick, each output writer of each replicate that
    is due writes, and a stop signal whose exception was swallowed is raised."""
    units = dict(zip(model.fields.names, model.fields.units))
    writers = [w for r, (c, f) in enumerate(zip(cfgs, run_files)) for w in output_writers(c, f, units, r)]
    cfg = cfgs[0]
    n_ticks = cfg.time.n_ticks
    start = model.steps
    if fresh:
        for w in writers:
            if w.due(model, last=False):
                w.write(model)
    show = not quiet and sys.stderr.isatty()
    desc = cfg.name if len(cfgs) == 1 else f"{cfgs[0].name} .. ({len(cfgs)} replicates)"
    with tqdm(total=n_ticks, initial=start, disable=not show, unit="tick", desc=desc) as bar:
        for tick in range(start + 1, n_ticks + 1):
            model.step()
            last = tick == n_ticks
            for w in writers:
                if w.due(model, last):
                    w.write(model)
                    stop.check()
            if show and model.recorded():  # the rows of recorded ticks only: they are made then anyway
                row = model.current_rows()[0]
                bar.set_postfix(day=f"{model.day:.2f}", tumor=int(row["tumor_alive"]),
                                car_t=int(row["car_t_effector"] + row["car_t_exhausted"]), refresh=False)
            bar.update(1)
            stop.check()
    for f in run_files:
        f.flush_rows()


def _check_same_config(path: Path, cfg: Config) -> None:
    """Refuse to resume ``path`` with a config other than the one it was started with."""
    with reading(path) as f:
        stored = load_yaml(f["config"][()].decode())
    diff = _differing_keys(stored, cfg.model_dump(mode="json"), ("output.path",))
    if diff:
        shown = ", ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
        raise RunFileError(f"{path}: was started with a different config (differs in {shown}); "
                           f"resume with the same config and --set options")


def _differing_keys(a: dict, b: dict, ignore: tuple[str, ...]) -> list[str]:
    """The dotted keys, sorted, whose values differ between two config mappings."""
    a, b = _flat(a), _flat(b)
    return sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k) != b.get(k))


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class _Stop:
    """The signal that asked a run to stop, or a write that failed unseen. A signal's
    handler raises at once; where that lands in a weakref callback or a ``__del__``,
    Python passes the exception to ``sys.unraisablehook`` and carries on, so the run
    raises it again after the tick (:meth:`check`) and the hook stays quiet about it.
    h5py reports a write that fails while it frees an object the same way: the run
    raises it after the write."""

    def __init__(self):
        self.signum: int | None = None
        self.failed_write: BaseException | None = None

    def exception(self) -> BaseException:
        return RunTerminated("received SIGTERM") if self.signum == signal.SIGTERM else KeyboardInterrupt()

    def check(self) -> None:
        if self.signum is not None:
            raise self.exception()
        if self.failed_write is not None:
            raise self.failed_write


@contextmanager
def _signals_raise():
    """Turn SIGTERM into :class:`RunTerminated` and SIGINT into KeyboardInterrupt while a
    run is on (main thread only), so a job killed by its scheduler or by Ctrl-C records
    status "failed" and can be resumed; yields the :class:`_Stop` the run checks."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.signum = signum
        raise stop.exception()

    previous_hook = sys.unraisablehook

    def unraisable(info):
        # the stop is raised again after the tick: no "Exception ignored" traceback for it;
        # h5py reports a write that failed while it freed an object here, and the run
        # stops after the write (one line, not a traceback per failed HDF5 call)
        if disk_full(info.exc_value):
            stop.failed_write = stop.failed_write or info.exc_value
        elif stop.signum is None or not isinstance(info.exc_value, KeyboardInterrupt | RunTerminated):
            previous_hook(info)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    sys.unraisablehook = unraisable
    try:
        yield stop
    finally:
        sys.unraisablehook = previous_hook
        for s, h in old.items():
            signal.signal(s, h)


def _git_commit() -> str:
    """The commit of the tme_abm source tree, or "" when it is not a git checkout (an
    installed package, even one inside some other repository)."""
    src = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=5)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != src.parent:
            return ""
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")
