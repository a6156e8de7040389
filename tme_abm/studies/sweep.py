"""Parameter sweeps and ensembles on Dask: a spec -> (point, replicate) tasks -> run files
and one outcomes table.

Every task is independent: ``run one config -> run file + outcome row``. Its seed is
derived from the sweep seed and its (point, replicate) alone, so results do not depend
on how many workers ran them, in which order, or which replicates shared a batch (the
replicates of a point run in batches, several in one model, each exactly as alone). A
finished task is recognised by its run file's status, so running the same sweep again
skips it and retries failed or interrupted ones (an interrupted run resumes from its checkpoint). The outcomes table is
rewritten atomically, sorted by (point, replicate), after every finished task.
docs/sweeps.md describes specs, clusters and the summary.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from dask.distributed import Client, LocalCluster, as_completed
from pydantic import Field, ValidationError
from SALib.sample import latin, morris, sobol
from tqdm import tqdm

from ..config import ConfigError, Strict, format_validation_error, load_config, load_yaml, read_yaml
from ..config.schema import FILE_NAME, per_replicate
from ..engine import rng as crng
from ..engine.backend import cuda_device_count
from ..io import RunFileError, open_run
from ..io.lock import LockedError, WriterLock
from ..io.runner import run_batch
from .errors import SweepError
from .table import TableAppender, read_table

_STREAMS = crng.streams(8, "sweep", ("design", "task"))
"""A sweep's sampled design points and its tasks' run seeds, from the sweep seed."""

SAMPLED = ("random", "lhs", "sobol", "morris")


class DesignConfig(Strict):
    """How points are chosen. ``parameters`` maps dotted config keys to a list of values
    (grid) or to ``[low, high]`` bounds (random, lhs, sobol, morris)."""

    kind: Literal["grid", "list", "random", "lhs", "sobol", "morris"]
    parameters: dict[str, list[Any]] = {}
    points: list[dict[str, Any]] = []
    """Explicit points (kind list): one mapping of dotted keys to values each."""
    samples: int = Field(8, ge=1)
    """random/lhs: points; sobol: base samples N (N (D + 2) points); morris: trajectories
    (N (D + 1) points)."""
    levels: int = Field(4, ge=2)
    """Morris grid levels."""
    log: list[str] = []
    """Parameters sampled uniformly in log10 between their bounds."""
    integer: list[str] = []
    """Parameters rounded to integers."""


class ClusterConfig(Strict):
    """Where the tasks run when no ``--scheduler`` is given: ``local`` (a LocalCluster
    of ``--workers`` processes), or ``slurm``/``pbs`` through dask-jobqueue with ``jobs``
    batch jobs and ``options`` passed to SLURMCluster/PBSCluster (cores, memory,
    walltime, queue, account, job_extra_directives, ...)."""

    kind: Literal["local", "slurm", "pbs"] = "local"
    jobs: int = Field(1, ge=1)
    options: dict[str, Any] = {}


class SweepSpec(Strict):
    name: str = Field(min_length=1, pattern=FILE_NAME)
    base: str
    """The base config (a path relative to the spec file)."""
    set: dict[str, Any] = {}
    """Dotted overrides applied to every point."""
    seed: int = Field(0, ge=0)
    replicates: int = Field(1, ge=1)
    design: DesignConfig
    cluster: ClusterConfig = ClusterConfig()
    experiment: dict[str, Any] | None = None
    """An experiment's question, arms and analysis (checked by tme_abm.studies.experiments;
    a plain sweep ignores it)."""


@dataclass(frozen=True)
class Task:
    point: int
    replicate: int
    seed: int
    params: dict

    @property
    def name(self) -> str:
        return f"p{self.point:04d}_r{self.replicate:03d}"


def load_spec(path, extra_set: list[str] | None = None) -> tuple[SweepSpec, Path]:
    """Read and check a spec; returns it and the base config's resolved path. Every
    parameter key is checked against the base config (values are checked per task)."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise SweepError(str(exc).replace("config file", "sweep spec")) from None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepError(format_validation_error(exc, str(path), SweepSpec)) from None
    for item in extra_set or []:
        if "=" not in item:
            raise SweepError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        spec.set[k.strip()] = load_yaml(v)
    base = (path.parent / spec.base).resolve()
    d = spec.design
    if d.kind == "list":
        if not d.points:
            raise SweepError(f"{path}: design.points: a list design needs at least one point")
        keys = sorted(set().union(*d.points))
    else:
        if not d.parameters:
            raise SweepError(f"{path}: design.parameters: name at least one dotted config key")
        keys = list(d.parameters)
        for k, v in d.parameters.items():
            if d.kind == "grid" and not v:
                raise SweepError(f"{path}: design.parameters.{k}: a grid needs at least one value")
            if d.kind in SAMPLED and (len(v) != 2 or not all(isinstance(x, (int, float)) for x in v)
                                      or not v[0] < v[1]):
                raise SweepError(f"{path}: design.parameters.{k}: {d.kind} needs numeric bounds [low, high] "
                                 f"with low < high, got {v}")
            if k in d.log and d.kind in SAMPLED and v[0] <= 0:
                raise SweepError(f"{path}: design.parameters.{k}: log-scaled bounds must be > 0, got {v}")
    for k in d.log + d.integer:
        if k not in keys:
            raise SweepError(f"{path}: design: {k!r} in log/integer is not a swept parameter")
    first = design_points(spec)[0]
    try:
        load_config(base, task_overrides(spec, first))
    except ConfigError as exc:
        raise SweepError(f"{path}: the base config with the first point does not validate: {exc}") from None
    return spec, base


def problem(spec: SweepSpec) -> dict:
    """The SALib problem of a sampled design (bounds in log10 for log parameters)."""
    p = spec.design.parameters
    bounds = [[float(np.log10(v[0])), float(np.log10(v[1]))] if k in spec.design.log else [float(v[0]), float(v[1])]
              for k, v in p.items()]
    return {"num_vars": len(p), "names": list(p), "bounds": bounds}


def unit_samples(spec: SweepSpec) -> np.ndarray:
    """(n_points, D) samples of a sampled design in the SALib problem's space."""
    d = spec.design
    prob = problem(spec)
    seed = crng.derived_seed(spec.seed, _STREAMS("design"))
    if d.kind == "sobol":
        return sobol.sample(prob, d.samples, calc_second_order=False, seed=seed)
    if d.kind == "morris":
        return morris.sample(prob, d.samples, num_levels=d.levels, seed=seed)
    if d.kind == "lhs":
        return latin.sample(prob, d.samples, seed=seed)
    rng = crng.generator(spec.seed, _STREAMS("design"))
    lo, hi = np.array(prob["bounds"]).T
    return lo + (hi - lo) * rng.random((d.samples, len(lo)))


def design_points(spec: SweepSpec) -> list[dict]:
    """The parameter values of every point, in design order."""
    d = spec.design
    if d.kind == "grid":
        keys = list(d.parameters)
        return [dict(zip(keys, combo)) for combo in itertools.product(*d.parameters.values())]
    if d.kind == "list":
        return [dict(p) for p in d.points]
    x = unit_samples(spec)
    out = []
    for row in x:
        point = {}
        for k, v in zip(d.parameters, row):
            v = float(10.0 ** v) if k in d.log else float(v)
            point[k] = int(round(v)) if k in d.integer else v
        out.append(point)
    return out


def task_seed(sweep_seed: int, point: int, replicate: int) -> int:
    """The run seed of one task: a hash of (sweep seed, point, replicate) in [0, 2^63)."""
    return crng.derived_seed(sweep_seed, _STREAMS("task"), point, replicate)


def swept_keys(spec: SweepSpec) -> list[str]:
    """The dotted config keys the design varies (a list design: every key any point sets)."""
    d = spec.design
    return list(d.parameters) if d.kind != "list" else sorted(set().union(*d.points))


def tasks(spec: SweepSpec) -> list[Task]:
    return [Task(i, r, task_seed(spec.seed, i, r), p)
            for i, p in enumerate(design_points(spec)) for r in range(spec.replicates)]


def task_overrides(spec: SweepSpec, params: dict) -> list[str]:
    """The ``KEY=VALUE`` overrides of a point: the spec's ``set`` and the point's values."""
    return overrides_of({**spec.set, **params})


def overrides_of(items: dict) -> list[str]:
    """``KEY=VALUE`` overrides of dotted keys and their values."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in items.items()]


def batches(todo: list[Task], size: int) -> list[list[Task]]:
    """The tasks in batches of at most ``size`` replicates each (a batch runs in one
    model, :func:`tme_abm.io.runner.run_batch`): replicates of one point, or of points
    that differ only in keys that may differ per replicate (the patient's parameters,
    :func:`~tme_abm.config.schema.per_replicate`), in (point, replicate) order."""
    def shared(t: Task) -> str:
        return json.dumps({k: v for k, v in t.params.items() if not per_replicate(k)}, sort_keys=True)

    out = []
    order = sorted(todo, key=lambda t: (shared(t), t.point, t.replicate))
    for _, group in itertools.groupby(order, key=shared):
        group = list(group)
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return sorted(out, key=lambda b: (b[0].point, b[0].replicate))


def run_tasks(base: str, common: dict, batch: list[Task], out_dir: str) -> list[dict]:
    """Run a batch of tasks on a worker (or skip those complete): replicates of points
    that differ at most in per-replicate keys, each with the ``common`` overrides (the
    spec's ``set``) and its point's values. Returns their outcome rows. Never raises: an
    error is recorded in the rows (status failed) and, where a run started, its file.
    Interrupted runs resume from their checkpoints, the others start afresh, each group
    in one model."""
    t0 = time.perf_counter()
    rows, cfgs, paths, status = [], [], [], []
    for task in batch:
        path = Path(out_dir) / "runs" / f"{task.name}.h5"
        rows.append({"point": task.point, "replicate": task.replicate, "seed": task.seed, **task.params,
                     "path": str(path.relative_to(out_dir)), "ran": False})
        paths.append(path)
        try:
            cfgs.append(load_config(base, [*overrides_of({**common, **task.params}), f"seed={task.seed}",
                                           f"name={task.name}"]))
        except Exception as exc:  # recorded, so the other tasks go on
            cfgs.append(None)
            _failed(rows[-1], exc)
        st = None
        if path.exists():
            try:
                st = open_run(path).status
            except RunFileError:
                st = "unreadable"
        status.append(st)
    todo = [i for i in range(len(batch)) if cfgs[i] is not None and status[i] != "complete"]
    resumable = [i for i in todo if status[i] in ("running", "failed")]
    fresh = [i for i in todo if i not in resumable]
    if resumable:
        try:
            run_batch([cfgs[i] for i in resumable], [paths[i] for i in resumable], quiet=True, resume=True)
        except RunFileError:
            fresh += resumable  # no usable checkpoint: start again
        except Exception as exc:  # recorded, so the other batches go on
            for i in resumable:
                _failed(rows[i], exc)
    if fresh:
        try:
            run_batch([cfgs[i] for i in fresh], [paths[i] for i in fresh], quiet=True, overwrite=True)
        except Exception as exc:  # recorded, so the other batches go on
            for i in fresh:
                _failed(rows[i], exc)
    seconds = (time.perf_counter() - t0) / len(batch)
    for i, row in enumerate(rows):
        row["ran"] = i in todo
        if "status" not in row:
            try:
                r = open_run(paths[i])
                row.update(status=r.status, error="", **r.outcomes)
            except Exception as exc:
                _failed(row, exc)
        row["task_seconds"] = seconds
    return rows


def _failed(row: dict, exc: BaseException) -> None:
    row.update(status="failed", error=f"{type(exc).__name__}: {exc}".strip())
    row["traceback"] = "".join(traceback.format_exception(exc, limit=3))


@dataclass(frozen=True)
class Executor:
    """Where and how a study's tasks run (``--workers``, ``--scheduler``, ``--gpus``,
    ``--batch`` and the progress bar of ``tme-abm sweep`` and ``experiment``).

    Attributes:
        workers: local worker processes (default 1; ignored with a scheduler or GPUs).
        scheduler: the address of a running Dask scheduler.
        gpus: one worker per listed CUDA device (dask-cuda).
        progress: show a progress bar.
        batch: replicates of a point run together in one model (default
            :func:`default_batch`).
    """

    workers: int | None = None
    scheduler: str | None = None
    gpus: tuple[int, ...] | None = None
    progress: bool = True
    batch: int | None = None


def _client(spec: SweepSpec, executor: Executor):
    """A dask.distributed Client for the sweep, and the cluster to close (or None)."""
    logging.getLogger("distributed").setLevel(logging.WARNING)  # no per-worker start-up chatter
    if executor.scheduler:
        return Client(executor.scheduler), None
    if spec.cluster.kind in ("slurm", "pbs"):
        cluster = jobqueue_cluster(spec)
        cluster.scale(jobs=spec.cluster.jobs)
        return Client(cluster), cluster
    if executor.gpus:
        cluster = gpu_cluster(executor.gpus)
    else:
        cluster = LocalCluster(n_workers=executor.workers or 1, threads_per_worker=1, processes=True,
                               silence_logs=logging.ERROR,
                               dashboard_address=":0")  # any free port: sweeps can run side by side
    return Client(cluster), cluster


def jobqueue_cluster(spec: SweepSpec):
    """A dask-jobqueue SLURMCluster or PBSCluster from the spec's ``cluster.options``."""
    try:
        import dask_jobqueue  # noqa: PLC0415 - the cluster extra, needed only for batch queues
    except ImportError:
        raise SweepError("cluster.kind slurm/pbs needs dask-jobqueue: pip install 'tme-abm[cluster]'") from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[spec.cluster.kind]
    opts = {"cores": 1, "processes": 1, "memory": "8GB", **spec.cluster.options}
    try:
        return cls(**opts)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"cluster.options for {spec.cluster.kind}: {exc}") from None


def gpu_cluster(gpus: Sequence[int]):
    """One single-threaded worker process per listed GPU: dask-cuda's LocalCUDACluster,
    which puts each worker's own device first in its CUDA_VISIBLE_DEVICES (the device
    CuPy then uses). Devices the machine does not have are refused first."""
    present = cuda_device_count()
    missing = [g for g in gpus if not 0 <= g < present]
    if missing:
        have = ", ".join(map(str, range(present))) if present else "none"
        raise SweepError(f"--gpus {','.join(map(str, gpus))}: no CUDA device {', '.join(map(str, missing))} "
                         f"on this machine (devices: {have})")
    try:
        from dask_cuda import LocalCUDACluster  # noqa: PLC0415 - the cuda12 extra, needed only for --gpus
    except ImportError:
        raise SweepError("--gpus needs dask-cuda: pip install 'tme-abm[cuda12]'") from None
    try:
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(gpus), threads_per_worker=1, dashboard_address=":0",
                                silence_logs=logging.ERROR)
    except Exception as exc:  # no driver, no such device: one line for the user
        raise SweepError(f"--gpus {','.join(map(str, gpus))}: cannot start GPU workers "
                         f"({type(exc).__name__}: {exc})") from None


CPU_BATCH = 8
"""Default replicates per batch on CPU workers (docs/sweeps.md, "Batches": the measured
gain per replicate levels off there, and smaller batches keep workers busy)."""


def default_batch(spec: SweepSpec, base: Path, gpus: Sequence[int] | None) -> int:
    """Replicates per batch when ``--batch`` is not given: on GPU workers (``--gpus``, or a
    base config with ``backend: cupy``) the replicates of a point (at least
    :data:`CPU_BATCH`); else :data:`CPU_BATCH`."""
    try:
        backend = load_config(base, task_overrides(spec, {})).backend
    except ConfigError:
        backend = "numpy"
    return max(spec.replicates, CPU_BATCH) if gpus or backend == "cupy" else CPU_BATCH


def run_sweep(spec_path, out_dir, executor: Executor = Executor(), *,
              extra_set: list[str] | None = None) -> pd.DataFrame:
    """Run every task of a sweep not yet complete in ``out_dir``; returns the outcomes table."""
    spec, base = load_spec(spec_path, extra_set)
    return run_spec(spec, base, out_dir, executor)


def run_spec(spec: SweepSpec, base: Path, out_dir, executor: Executor = Executor()) -> pd.DataFrame:
    """Run a loaded spec (see :func:`run_sweep`), the replicates of each point in batches
    of ``executor.batch`` (default :func:`default_batch`). One sweep at a time runs in a
    folder: a second is refused (SweepError naming the process that holds the folder)."""
    if executor.batch is not None and executor.batch < 1:
        raise SweepError(f"--batch {executor.batch}: must be at least 1")
    out = Path(out_dir)
    try:
        lock = WriterLock(out, "another sweep is running in this folder", lock_name=".sweep.lock").acquire()
    except LockedError as exc:
        raise SweepError(str(exc)) from None
    try:
        return _run_locked(spec, base, out, executor)
    finally:
        lock.release()


def _run_locked(spec: SweepSpec, base: Path, out: Path, executor: Executor) -> pd.DataFrame:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _write_manifest(spec, base, out)
    todo = tasks(spec)
    failed = 0
    size = executor.batch or default_batch(spec, base, executor.gpus)
    client, cluster = _client(spec, executor)
    table = TableAppender(out, swept_keys(spec))
    try:
        futures = [client.submit(run_tasks, str(base), spec.set, b, str(out),
                                 key=f"{spec.name}-{b[0].name}-{len(b)}", pure=False) for b in batches(todo, size)]
        bar = tqdm(total=len(todo), unit="replicate", desc=spec.name, disable=not executor.progress)
        for fut in as_completed(futures):
            rows = fut.result()
            for row in rows:
                table.append(row)
                failed += row["status"] != "complete"
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(rows))
        bar.close()
    finally:
        table.close()
        client.close()
        if cluster is not None:
            close_cluster(cluster)
    return read_table(out)


WORKER_EXIT_S = 60.0
"""How long a local worker process may take to exit when its cluster closes."""


def close_cluster(cluster) -> None:
    """Close a cluster this process started. A local cluster's nannies stop their worker
    processes first, each given :data:`WORKER_EXIT_S` to exit: Dask's own close waits 4 s
    and then kills the process with a warning, which a worker of a loaded machine,
    tearing down NumPy, Numba and HDF5 at its exit, can take longer than."""
    if isinstance(cluster, LocalCluster):
        async def stop_workers():
            await asyncio.gather(*(w.close(timeout=WORKER_EXIT_S) for w in cluster.workers.values()))

        cluster.sync(stop_workers)
    cluster.close()


def _write_manifest(spec: SweepSpec, base: Path, out: Path) -> None:
    """``sweep.yaml``: the spec as run (base path resolved) and every point, for the
    summary and for provenance. A different spec in the same folder is refused, except
    for its replicates (an ensemble grows or is read at fewer), its experiment block and
    its cluster. ``declared`` keeps the experiment block as it was when the folder's
    first run started, with that time: what the experiment declared before its runs."""
    doc = {"spec": {**spec.model_dump(mode="json"), "base": str(base)},
           "points": design_points(spec)}
    if spec.design.kind in SAMPLED:
        doc["samples"] = unit_samples(spec).tolist()
    path = out / "sweep.yaml"
    old = yaml.safe_load(path.read_text()) if path.exists() else None
    if old is not None and _runs_part(old) != _runs_part(doc):
        raise SweepError(f"{out}: holds a different sweep (sweep.yaml differs); use another --out")
    if spec.experiment is not None:
        doc["declared"] = (old or {}).get("declared") or {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "experiment": copy.deepcopy((old or doc)["spec"]["experiment"])}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _runs_part(doc: dict) -> dict:
    """What decides each run: the manifest without the experiment block (its question,
    arm names and expectations only change the analysis), the cluster and the number of
    replicates (a task's seed does not depend on it)."""
    spec = {k: v for k, v in doc["spec"].items() if k not in ("experiment", "cluster", "replicates")}
    return {"spec": spec, "points": doc["points"], "samples": doc.get("samples")}


def read_manifest(out) -> dict:
    path = Path(out) / "sweep.yaml"
    if not path.exists():
        raise SweepError(f"{out}: not a sweep folder (no sweep.yaml)")
    return yaml.safe_load(path.read_text())
