"""The LOD line solves compiled for the CPU (Numba): the plain scaled Thomas sweep of
:func:`.thomas.thomas_sweep_numpy`, its twin, with the same arithmetic in the same order
(float32 stays float32, no fused multiply-add), so the two agree bit for bit
(``tests/test_diffusion.py``).

NumPy sweeps a block plane by plane: each pass over the planes streams the whole block
through memory, twice per pass (an add and a multiply). The compiled sweep takes the
block's columns a few hundred at a time, so the forward and the backward pass over
those columns run in the cache: the block crosses memory once each way.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U = np.uint64  # unsigned indices: a signed one is checked for wrapping around at every access

_COLUMNS = 512
"""Columns solved together: n x 512 values (400 KB at n = 200, float32) stay in L2."""


@njit(cache=True, nogil=True, error_model="numpy")
def thomas_columns(v, cp, rhs_lo, rhs_hi, f0, f1, w0, w1):
    """Scaled Thomas solve along axis 2 of ``v`` ((F, R, n, W)) for fields f0:f1 and
    columns w0:w1, in place: ``g_i = cp_i (d_i + g_{i-1})``, then
    ``h_i = g_i + cp_i h_{i+1}`` (the buffer then holds ``r * u``); ``cp`` (F, n),
    ``rhs_lo`` and ``rhs_hi`` (F,) the face terms added to the first and last plane.

    Each block of columns is copied into a scratch array of its own, solved there and
    copied back: rows of the scratch are ``_COLUMNS`` apart, which the compiler can
    tell never overlap, so it vectorises the passes without run-time checks."""
    n, W = v.shape[2], v.shape[3]
    flat = v.reshape(-1)
    cols = _COLUMNS
    g = np.empty(n * cols, dtype=v.dtype)
    for f in range(f0, f1):
        lo, hi = rhs_lo[f], rhs_hi[f]
        for r in range(v.shape[1]):
            base = ((f * v.shape[1] + r) * n) * W
            for a in range(w0, w1, cols):
                width = min(cols, w1 - a)
                for i in range(n):
                    src, dst = _U(base + i * W + a), _U(i * cols)
                    for j in range(width):
                        g[dst + _U(j)] = flat[src + _U(j)]
                last = _U((n - 1) * cols)
                for j in range(width):
                    g[_U(j)] += lo
                for j in range(width):
                    g[last + _U(j)] += hi
                c = cp[f, 0]
                for j in range(width):
                    g[_U(j)] *= c
                for i in range(1, n):
                    c = cp[f, i]
                    row, prev = _U(i * cols), _U((i - 1) * cols)
                    for j in range(width):
                        g[row + _U(j)] = (g[row + _U(j)] + g[prev + _U(j)]) * c
                for i in range(n - 2, -1, -1):
                    c = cp[f, i]
                    row, nxt = _U(i * cols), _U((i + 1) * cols)
                    for j in range(width):
                        g[row + _U(j)] = g[row + _U(j)] + g[nxt + _U(j)] * c
                for i in range(n):
                    src, dst = _U(i * cols), _U(base + i * W + a)
                    for j in range(width):
                        flat[dst + _U(j)] = g[src + _U(j)]
