"""Benchmarks reported by ``tme-abm bench``."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .biology.defaults import default_fields
from .biology.fields import FieldSet
from .config import resolve_config
from .engine import rng as crng
from .engine.backend import make_backend
from .engine.diffusion import DiffusionSolver, FieldGrid, Sources
from .engine.lattice import FACES
from .model import TMEModel

_STREAMS = crng.streams(10, "bench", ("inputs",))
"""The benchmarks' random inputs (fields, cell sites)."""

def bench_diffusion(shape, n_fields: int, dtype: str = "float32", backend: str = "auto",
                    dt_min: float = 6.0, repeats: int = 5, warmup: int = 2, scheme: str = "lod",
                    reference: bool = False) -> dict:
    """Time one step of ``n_fields`` fields on a lattice of ``shape`` with one scheme.

    Fields cycle through the default fields' D and decay (oxygen, adenosine, ...),
    20 um spacing; ``lod``: all faces no-flux; ``steady`` and ``implicit``: faces fixed
    at 1 (so every field has a steady state) and, like oxygen, cells taking the field
    up at 10/min on a random 30% of voxels, the steady solve warm-started from the
    previous step's solution with 1% of those cells moved between steps. Returns a dict
    with the median seconds per step and voxel-field updates per second (voxels *
    fields / median step time). ``reference`` (lod only): also time
    :func:`reference_lod_step` on the same fields in the same run (``reference_step_s``)
    and give ``speedup_vs_reference``, its median over the solver's.
    """
    be = make_backend(backend, dtype)
    defaults = list(default_fields().values())
    diff = [defaults[i % len(defaults)]["diffusion_um2_per_min"] for i in range(n_fields)]
    decay = [defaults[i % len(defaults)]["decay_per_min"] for i in range(n_fields)]
    rng = crng.generator(0, _STREAMS("inputs"))
    init = rng.random((n_fields, *shape), dtype=np.float64)
    n_vox = int(np.prod(shape))
    faces = None
    sources = [None] * (warmup + repeats)
    if scheme != "lod":
        faces = np.ones((n_fields, len(shape), 2))
        sites = np.flatnonzero(rng.random(n_vox) < 0.3)
        for k in range(warmup + repeats):
            moved = rng.random(len(sites)) < 0.01
            sites = np.unique(np.where(moved, rng.integers(0, n_vox, len(sites)), sites))
            upt = np.full((n_fields, len(sites)), 10.0)
            sources[k] = Sources(be.xp.asarray(sites), be.xp.zeros_like(be.xp.asarray(upt)), be.xp.asarray(upt))
    solver = DiffusionSolver(FieldGrid(shape, 20.0, diff, decay, faces), dt_min, initial=init, backend=be,
                             schemes=[scheme] * n_fields)
    try:
        for k in range(warmup):
            solver.step(sources[k])
        be.synchronize()
        times = []
        for k in range(warmup, warmup + repeats):
            t0 = time.perf_counter()
            solver.step(sources[k])
            be.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        solver.close()
    del solver  # its buffers leave the cache to the reference
    med = statistics.median(times)
    extra = {}
    if reference:
        if scheme != "lod":
            raise ValueError("the reference is an LOD step: use it with scheme lod")
        r = np.asarray(diff) * dt_min / 20.0**2
        kappa = np.asarray(decay) * dt_min / len(shape)
        u = init.astype(dtype)
        ref_times = []
        for k in range(warmup + repeats):
            t0 = time.perf_counter()
            reference_lod_step(u, r, kappa)
            if k >= warmup:
                ref_times.append(time.perf_counter() - t0)
        ref = statistics.median(ref_times)
        extra = {"reference_step_s": ref, "speedup_vs_reference": ref / med}
    return {
        "benchmark": "diffusion",
        "scheme": scheme,
        "shape": list(shape),
        "fields": n_fields,
        "dtype": dtype,
        "backend": be.name,
        "device": be.device,
        "repeats": repeats,
        "warmup": warmup,
        "median_step_s": med,
        "min_step_s": min(times),
        "voxel_field_updates_per_s": n_vox * n_fields / med,
        **extra,
    }


def reference_lod_step(u: np.ndarray, r: np.ndarray, kappa: np.ndarray) -> None:
    """A straightforward NumPy LOD step, the yardstick of ``bench diffusion
    --reference``: fields ``u`` ((F, *shape), in place) with no-flux faces, backward
    Euler along each axis in turn by the Thomas algorithm along every line at once, the
    axis brought to the front by a contiguous copy (the leading one is swept in place),
    in-place plane operations in the fields' dtype. ``r``: (F,) D dt / h^2; ``kappa``:
    (F,) decay dt / ndim."""
    nf, ex = u.shape[0], (slice(None),) + (None,) * (u.ndim - 2)
    for axis in range(1, u.ndim):
        v = u if axis == 1 else np.ascontiguousarray(np.moveaxis(u, axis, 1))  # (F, n, ...)
        n = v.shape[1]
        b = np.repeat((1.0 + kappa + 2.0 * r)[:, None], n, axis=1)
        b[:, 0] -= r
        b[:, -1] -= r
        m, cp = np.empty((nf, n)), np.empty((nf, n))
        m[:, 0], cp[:, 0] = b[:, 0], -r / b[:, 0]
        for i in range(1, n):
            m[:, i] = b[:, i] + r * cp[:, i - 1]
            cp[:, i] = -r / m[:, i]
        rr, inv_m, cpf = r.astype(u.dtype)[ex], (1.0 / m).astype(u.dtype), cp.astype(u.dtype)
        tmp = np.empty(v[:, 0].shape, u.dtype)
        v[:, 0] *= inv_m[:, 0][ex]
        for i in range(1, n):  # d'_i = (d_i + r d'_{i-1}) / m_i
            np.multiply(v[:, i - 1], rr, out=tmp)
            v[:, i] += tmp
            v[:, i] *= inv_m[:, i][ex]
        for i in range(n - 2, -1, -1):  # u_i = d'_i - c'_i u_{i+1}
            np.multiply(v[:, i + 1], cpf[:, i][ex], out=tmp)
            v[:, i] -= tmp
        if axis != 1:
            np.copyto(np.moveaxis(u, axis, 1), v)


def bench_model(config, replicates: int = 1) -> dict:
    """Run a config (a Config, path or mapping) to its end and time it; with
    ``replicates`` R > 1, also a batch of R replicates of it (seeds seed .. seed + R - 1)
    in one model, right after the single run, and compare the time per replicate.

    First a model of the config is built and stepped twice, untimed (``warm_up_s``):
    that loads the compiled kernels from Numba's cache, or compiles them on a fresh
    install, which the timed runs then do not pay. Agent-updates are cells x ticks
    summed over the run (every living cell is updated once per tick); reported with the
    wall and CPU seconds (the process's, all its threads) in all and per simulated day,
    per stage (of the single run), and the explicit device-to-host copies per tick
    (``Backend.to_host``; scalar reads with ``int()``/``float()`` and boolean-mask
    indexing, which also wait for a GPU, are not counted). With R > 1: ``batch`` holds
    the batch's wall and CPU seconds, in all, per replicate and per replicate-day, and
    its agent-updates per second; ``speedup`` is the single run's wall time over the
    batch's wall time per replicate (``cpu_speedup`` the same in CPU seconds).
    """
    cfg = resolve_config(config)
    out = {"warm_up_s": _warm_up(cfg)}
    out.update(_time_model(TMEModel(cfg)))
    if replicates > 1:
        batch = _time_model(TMEModel(cfg, seeds=[cfg.seed + r for r in range(replicates)]))
        per, cpu_per = batch["wall_s"] / replicates, batch["cpu_s"] / replicates
        out["batch"] = {"replicates": replicates, "backend": batch["backend"], "wall_s": batch["wall_s"],
                        "cpu_s": batch["cpu_s"], "wall_s_per_replicate": per, "cpu_s_per_replicate": cpu_per,
                        "cpu_s_per_replicate_day": cpu_per / batch["simulated_days"],
                        "agent_updates_per_s": batch["agent_updates_per_s"], "stage_seconds": batch["stage_seconds"],
                        "host_copies_per_tick": batch["host_copies_per_tick"]}
        out["speedup"] = out["wall_s"] / per
        out["cpu_speedup"] = out["cpu_s"] / cpu_per
    return out


def _warm_up(cfg) -> float:
    """Wall seconds to build a model of ``cfg`` and step it twice (its kernels loaded or
    compiled); the model is then dropped."""
    t0 = time.perf_counter()
    model = TMEModel(cfg)
    try:
        for _ in range(2):
            model.step()
    finally:
        model.fields.solver.close()
    return time.perf_counter() - t0


def _time_model(model: TMEModel) -> dict:
    """Step ``model`` to its end; wall time, agent-updates and stage seconds."""
    model.scheduler.synchronize = model.backend.synchronize  # stage seconds include device work
    model.backend.synchronize()
    copies0, ticks0 = model.backend.host_copies, model.steps
    updates = 0
    cells_max = 0
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        while model.running:
            n = sum(len(p) for p in model.populations)
            updates += n
            cells_max = max(cells_max, n)
            model.step()
        model.backend.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        model.fields.solver.close()
    sim_days = model.time_min / 1440.0
    stage = model.scheduler.seconds
    agents_s = sum(v for k, v in stage.items() if k != "fields")
    return {
        "benchmark": "model",
        "config": model.config.name,
        "backend": model.backend.name,
        "device": model.backend.device,
        "lattice": list(model.lattice.shape),
        "ticks": model.steps,
        "simulated_days": sim_days,
        "wall_s": wall,
        "wall_s_per_simulated_day": wall / sim_days,
        "cpu_s": cpu,
        "cpu_s_per_simulated_day": cpu / sim_days,
        "agent_updates": updates,
        "max_cells": cells_max,
        "agent_updates_per_s": updates / wall,
        "agent_updates_per_agent_s": updates / agents_s if agents_s > 0 else float("nan"),
        "stage_seconds": stage,
        "host_copies_per_tick": (model.backend.host_copies - copies0) / max(model.steps - ticks0, 1),
        "final": model.current_rows()[0],
    }


def field_accuracy(config, ticks: int, reference_steps: int = 400) -> dict:
    """How far each field of a config is, after one field solve at the config's own
    settings, from a converged reference for the same cells.

    Runs ``config`` (a Config, float64) for ``ticks`` ticks, then solves each field alone
    over one field interval (tick_min x fields_every_ticks) from the model's current
    fields and sources: with its configured scheme and settings; with the LOD step at 1
    and 80 substeps; and as the reference, unsplit backward Euler with
    ``reference_steps`` substeps solved to a relative residual of 1e-10 (or the steady
    state to 1e-10 for a steady field). Returns per field the reference's scale (its
    largest absolute value, at least its boundary/vessel value) and each variant's
    largest deviation from the reference as a fraction of that scale.
    """
    model = TMEModel(config)
    cfg = model.config
    try:
        for _ in range(ticks):
            model.step()
        fields = model.fields
        src = fields.sources(model.populations)
        start = model.backend.to_host(fields.values).astype(np.float64)
        interval = cfg.time.tick_min * cfg.time.fields_every_ticks
        schemes = cfg.field_schemes
        specs = cfg.enabled_fields
        out = {}
        for name, fc in specs.items():
            i = fields.index[name]
            one = {name: fc}

            def solve(scheme, n, tol, i=i, one=one, name=name):
                fs = FieldSet(one, model.lattice, make_backend("numpy", "float64"), interval / n, {name: scheme}, tol)
                fs.solver.set_state([start[i].reshape(1, -1)], 0)
                fs.step(Sources(src.sites, src.secretion[i:i + 1], src.uptake[i:i + 1]), n)
                v = fs.backend.to_host(fs.values[0, 0])
                fs.solver.close()
                return v

            ref_scheme = "lod" if fc.diffusion_um2_per_min == 0 else (
                "steady" if schemes[name] == "steady" else "implicit")
            ref = solve(ref_scheme, 1 if ref_scheme == "steady" else reference_steps, 1e-10)
            faces = [fc.boundary.face(f) for f in FACES[-2 * model.lattice.ndim:]]
            fixed = [abs(fc.vessel_value or 0.0)] + [abs(b.value) for b in faces if b.kind == "dirichlet"]
            scale = max(float(np.abs(ref).max()), *fixed)
            err = {}
            variants = {f"{schemes[name]} (shipped)": (schemes[name], cfg.time.field_substeps),
                        "lod x1": ("lod", 1), "lod x80": ("lod", 80)}
            for label, (scheme, n) in variants.items():
                v = solve(scheme, n, cfg.time.field_tolerance)
                err[label] = float(np.abs(v - ref).max() / scale) if scale > 0 else 0.0
            out[name] = {"scheme": schemes[name], "reference": ref_scheme, "scale": scale, "error": err}
    finally:
        model.fields.solver.close()
    return {"benchmark": "fields", "config": cfg.name, "ticks": ticks, "interval_min": interval, "fields": out}
