"""Benchmarks reported by ``tme-abm bench``."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .biology.defaults import default_fields
from .engine.backend import make_backend
from .engine.diffusion import DiffusionSolver
from .model import TMEModel


def bench_diffusion(shape, n_fields: int, dtype: str = "float32", backend: str = "auto",
                    dt_min: float = 6.0, repeats: int = 5, warmup: int = 2) -> dict:
    """Time one LOD step of ``n_fields`` fields on a lattice of ``shape``.

    Fields cycle through the default fields' D and decay (oxygen, adenosine, ...),
    all faces no-flux, 20 um spacing. Returns a dict with the median seconds per step
    and voxel-field updates per second (voxels * fields / median step time).
    """
    be = make_backend(backend, dtype)
    defaults = list(default_fields().values())
    diff = [defaults[i % len(defaults)]["diffusion_um2_per_min"] for i in range(n_fields)]
    decay = [defaults[i % len(defaults)]["decay_per_min"] for i in range(n_fields)]
    rng = np.random.default_rng(0)
    init = rng.random((n_fields, *shape), dtype=np.float64)
    solver = DiffusionSolver(shape, 20.0, diff, decay, dt_min=dt_min, initial=init, backend=be)
    try:
        for _ in range(warmup):
            solver.step()
        be.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            solver.step()
            be.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        solver.close()
    med = statistics.median(times)
    n_vox = int(np.prod(shape))
    return {
        "benchmark": "diffusion",
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
    }


def bench_model(config) -> dict:
    """Run a config (a Config, path or mapping) to its end and time it.

    Agent-updates are cells x ticks summed over the run (every living cell is updated
    once per tick); reported with the wall time per simulated day and per stage.
    """
    model = TMEModel(config)
    model.backend.synchronize()
    updates = 0
    cells_max = 0
    t0 = time.perf_counter()
    try:
        while model.running:
            n = sum(len(p) for p in model.populations)
            updates += n
            cells_max = max(cells_max, n)
            model.step()
        model.backend.synchronize()
        wall = time.perf_counter() - t0
    finally:
        model.fields.solver.close()
    sim_days = model.time_min / 1440.0
    stage = model.scheduler.seconds
    agents_s = sum(v for k, v in stage.items() if k != "fields")
    return {
        "benchmark": "model",
        "config": getattr(config, "name", str(config)),
        "backend": model.backend.name,
        "device": model.backend.device,
        "lattice": list(model.lattice.shape),
        "ticks": model.steps,
        "simulated_days": sim_days,
        "wall_s": wall,
        "wall_s_per_simulated_day": wall / sim_days,
        "agent_updates": updates,
        "max_cells": cells_max,
        "agent_updates_per_s": updates / wall,
        "agent_updates_per_agent_s": updates / agents_s if agents_s > 0 else float("nan"),
        "stage_seconds": stage,
        "final": model.current_row(),
    }
