"""What several test modules share: the small configs they run, run-file comparison,
the command line in a subprocess, fault injection, rule mini-scenarios and analytic
field profiles (a module, not a test file: tests import from it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from tme_abm.biology.populations import CELL_TYPES
from tme_abm.config import load_config, validate_config
from tme_abm.engine.backend import make_backend
from tme_abm.engine.diffusion import NOFLUX
from tme_abm.model import TMEModel

# ---- runs and run files ---------------------------------------------------------------

ROOT = Path(__file__).parent.parent
BASELINE = ROOT / "configs" / "baseline.yaml"
# A small baseline: lymphodepletion on day -3, infusion on day 0, 3.5 days on 40 x 40.
SMALL = ["time.burn_in_days=0", "lattice.shape=[40, 40]", "tumor.radius_sites=8", "time.duration_days=3.5",
         "monocyte.initial_cells=5",
         "granulocyte.initial_cells=5", "output.snapshot_every_min=240", "output.cell_snapshot_every_min=480",
         "output.checkpoint_every_min=360", "output.record_every_ticks=1", "backend=numpy"]
COMPARED = ("timeseries", "fields", "cells", "events", "event")


def small(*extra):
    return load_config(BASELINE, [*SMALL, *extra])


def datasets(path, groups=COMPARED) -> dict[str, np.ndarray]:
    """Every dataset under ``groups`` of a file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        for g in groups:
            if isinstance(f[g], h5py.Dataset):
                out[g] = f[g][()]
            else:
                f[g].visititems(lambda k, o, g=g: out.__setitem__(f"{g}/{k}", o[()])
                                if isinstance(o, h5py.Dataset) else None)
        out["outcomes"] = dict(f["outcomes"].attrs) if "outcomes" in f else {}
    return out


def assert_same_run(a, b):
    da, db = datasets(a), datasets(b)
    assert da.keys() == db.keys()
    for k in da:
        if k == "outcomes":
            assert json.dumps(da[k], default=str, sort_keys=True) == json.dumps(db[k], default=str, sort_keys=True)
        else:
            assert np.array_equal(da[k], db[k], equal_nan=da[k].dtype.kind == "f"), k


def flip_bits(path, dataset: str, chunk: int) -> None:
    """Invert 64 bytes in the middle of one stored chunk of ``dataset`` (a damaged disk)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        block = fh.read(64)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))


def fail_at_tick(monkeypatch, tick: int) -> None:
    """Make every model's step raise at ``tick`` (``monkeypatch.undo()`` ends it)."""
    original = TMEModel.step

    def failing(self):
        if self.steps == tick:
            raise RuntimeError(f"simulated fault at tick {tick}")
        original(self)

    monkeypatch.setattr(TMEModel, "step", failing)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    """``tme-abm ARGS`` in a subprocess on NumPy (keyword arguments go to subprocess.run)."""
    env = {**os.environ, "TME_ABM_BACKEND": "numpy", **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "tme_abm.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=kw.pop("timeout", 600), **kw)


# A batch with every kind of therapy event (tests/test_batch.py, tests/test_host_reads.py)
EVENTS = ["tumor.archetype=bulky", "tumor.initial_cells=30", "car_t.initial_cells=20", "time.duration_days=4",
          "therapy=[{kind: lymphodepletion, day: -3}, {kind: resection, day: -2.5, fraction: 0.2, order: outside},"
          " {kind: radiotherapy, day: -2, dose_gy: 2.0, fractions: 2, interval_days: 0.5},"
          " {kind: infusion, day: 0, dose_cells: 1.0e8}, {kind: mrd, day: 0.5, residual_cells: 60}]"]


# ---- rules in isolated mini-scenarios ---------------------------------------------------

BE = make_backend("numpy", "float64")
SEEDS = range(5)
OFF = {"enabled": False}


def fixed(value: float) -> dict:
    """A field that stays at ``value`` everywhere."""
    zero = {t: 0.0 for t in CELL_TYPES}
    return {"initial": value, "vessel_value": value, "diffusion_um2_per_min": 0.0, "decay_per_min": 0.0,
            "secretion_per_min": zero, "uptake_per_min": zero, "perfused": False}


def scenario(fields=None, shape=(60, 60), vessels=None, **sections):
    data = {
        "seed": 0, "lattice": {"shape": list(shape), "vessels": vessels or {"layout": "none"}},
        "time": {"tick_min": 6, "duration_days": 10, "field_substeps": 1},
        "tumor": {"archetype": "dispersed", "initial_cells": 0, "apoptosis_per_min": 0.0, "divide_per_min": 0.0},
        "car_t": {"move": {"speed_um_per_min": 0.0}, "death_per_min": 0.0},
        "patient": {"burden_scale": 1.0},  # one patient cell per agent: the rules of single cells
        "fields": {"oxygen": fixed(38.0), "adenosine": fixed(0.0), "protons": fixed(0.0), "cxcl10": fixed(0.0),
                   "ccl2": fixed(0.0), "cxcl8": fixed(0.0), "cytokine": fixed(0.0), **(fields or {})},
    }
    return validate_config(merge(data, sections))


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def grid_sites(shape, spacing, offset=(1, 1)):
    ys, xs = np.meshgrid(np.arange(offset[0], shape[0] - 1, spacing), np.arange(offset[1], shape[1] - 2, spacing),
                         indexing="ij")
    return ys.ravel(), xs.ravel()


def within(observed: float, n: int, p: float, k: float = 4.0) -> bool:
    return abs(observed / n - p) <= k * np.sqrt(p * (1 - p) / n) + 1e-12


def pairs_model(seed=0, antigen=1.0, fields=None, car_t=None, kill_rules=None):
    """Isolated (tumor, CAR T) pairs, side by side; engagement is immediate and lasts one tick."""
    rules = {"engage": {"antigen": {"half_max": 1e-3}},
             "kill": kill_rules if kill_rules is not None else {n: OFF for n in
                                                                 ("adenosine", "acidity", "hypoxia",
                                                                  "monocyte_contact", "granulocyte_contact")}}
    ct = {"engage_per_min": 100.0, "engagement_min": 6.0, "kill_probability": 0.6, "divide_probability": 0.0,
          "rules": rules, **(car_t or {})}
    m = TMEModel(scenario(fields=fields, car_t=ct, seed=seed), backend=BE)
    ys, xs = grid_sites(m.lattice.shape, 4)
    m.tumor.add(np.ravel_multi_index((ys, xs), m.lattice.shape), antigen=np.full(len(ys), antigen))
    sites = np.ravel_multi_index((ys, xs + 1), m.lattice.shape)
    m.car_t.add(sites, **m.car_t.new_cell_state(sites))
    return m, len(ys)


# ---- fields -----------------------------------------------------------------------------

DX = 20.0


def host(solver):
    """(F, *shape) host copy of a single solver's fields (its only replicate)."""
    return solver.backend.to_host(solver.values[:, 0])


UPTAKE_COLUMN = (1e5, 10.0, 38.0)
"""D (um^2/min), uptake U (1/min) and the fixed value c of :func:`uptake_column`."""


def uptake_column(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A column of ``n`` voxels held at c at y=0, no flux at y=L, cells taking up at U on
    every site: its face values (1, 2, 2) and steady state c cosh((L-y)/l)/cosh(L/l),
    l = sqrt(D/U) = 100 um, on the voxel centres."""
    D, U, c0 = UPTAKE_COLUMN
    faces = np.full((1, 2, 2), NOFLUX)
    faces[0, 0, 0] = c0
    y = (np.arange(n) + 0.5) * DX
    ell, L = np.sqrt(D / U), n * DX
    return faces, c0 * np.cosh((L - y) / ell) / np.cosh(L / ell)
