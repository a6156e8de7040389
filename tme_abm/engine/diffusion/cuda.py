"""Launchers of the LOD step's CUDA kernels (``kernels/lod_sweep.cu`` and
``kernels/lod_rotate.cu``, compiled once per backend by :meth:`Backend.raw_module`); each
kernel has a NumPy twin in :mod:`.thomas`."""

from __future__ import annotations

import numpy as np

from ..backend import Backend

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
SKIP = 2  # lod_sweep leaves fields of this kind alone (swept by lod_sweep_sink)


def cuda_sweep(backend: Backend, u, cp, rhs_lo, rhs_hi, invb, kinds, nf: int, n: int, w: int) -> None:
    """Launch ``lod_sweep`` on ``u`` viewed as (F, n, W): one thread per line, all fields.

    ``kinds[f]``: 1 diffusing (Thomas), 0 not diffusing (``u *= invb``), 2 skip."""
    mod = backend.raw_module("lod_sweep")
    kern = mod.get_function(f"lod_sweep_{_SUFFIX[np.dtype(u.dtype)]}")
    lines = nf * w
    threads = 128
    kern(((lines + threads - 1) // threads,), (threads,),
         (u, cp, rhs_lo, rhs_hi, invb, kinds, np.int32(nf), np.int32(n), np.int64(w)))


def cuda_sweep_sink(backend: Backend, u, e, b, r, rhs_lo, rhs_hi, n: int, w: int) -> None:
    """Launch ``lod_sweep_sink`` on one field ``u`` (n, W) with extra diagonal ``e`` (n, W),
    which it overwrites with the per-voxel coefficients."""
    mod = backend.raw_module("lod_sweep")
    t = np.dtype(u.dtype)
    kern = mod.get_function(f"lod_sweep_sink_{_SUFFIX[t]}")
    threads = 128
    kern(((w + threads - 1) // threads,), (threads,),
         (u, e, b, t.type(r), t.type(rhs_lo), t.type(rhs_hi), np.int32(n), np.int64(w)))


def cuda_rotate(backend: Backend, src, dst, scale, nf: int, n: int, w: int) -> None:
    """Launch ``lod_rotate``: dst (F, W, n) = transpose of src (F, n, W) times scale[f]."""
    mod = backend.raw_module("lod_rotate")
    kern = mod.get_function(f"lod_rotate_{_SUFFIX[np.dtype(src.dtype)]}")
    grid = ((w + 31) // 32, (n + 31) // 32, nf)
    kern(grid, (32, 8), (src, dst, scale, np.int32(n), np.int64(w)))
