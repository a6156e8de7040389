"""The biased random walk of :func:`tme_abm.engine.moves.walk`, compiled for the CPU
(Numba): every sub-move of one population's tick in one call, with no array operation
per sub-move. The array code of :mod:`.moves` is its twin (and the CuPy path);
``tests/test_rules.py`` holds the two to the same moves.

Each step follows the array code: a cell tries with a counter-based uniform keyed by its
id (the same hash as :func:`tme_abm.engine.rng.uniform`), picks a free Moore neighbour by
an inverse-CDF draw over ``exp(bias cos(angle to the gradient))`` weights (float32, as
there), and claimants of one site are resolved by the lowest ``site + priority``; all
tries of a sub-move see the occupancy at its start. The one difference is the exponential
(LLVM's ``expf`` here, NumPy's own vectorised one there), which may differ in the last
bit and so, very rarely, pick another neighbour.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .fused_rng import hashed
from .rng import ID_BITS

_jit = njit(cache=True, nogil=True, error_model="numpy")
_MASK = np.uint64((1 << ID_BITS) - 1)


@_jit
def _uniform(key, cell_key):
    """:func:`tme_abm.engine.rng.uniform` of one id (``cell_key``: replicate << 40 | id)
    under the stream key ``key`` of its replicate."""
    return hashed(key, np.uint64(cell_key) & _MASK)


@_jit
def walk_cells(site, key, movers, occupancy, code, shape, strides, n_grid, offsets, flat_offsets, unit,
               field, bias, p_try, try_keys, pick_keys, order_keys, best, winner):
    """All sub-moves of one population's walk over one tick; moves cells in place.

    Args:
        site, key: (n,) int64 the population's sites and random-number keys (in/out: site).
        movers: (k,) int64 indices of the cells that walk.
        occupancy: (n_sites,) int8 occupancy codes (in/out); code: this population's.
        shape, strides: (ndim,) int64 the lattice's extents and C strides of one copy;
            n_grid: sites of one copy.
        offsets: (m, ndim) int64 Moore offsets; flat_offsets: (m,) int64 their flat steps;
            unit: (m, ndim) float64 their unit vectors.
        field: (n_sites,) float the chemotaxis field in canonical order, or empty (no bias).
        bias: the chemotaxis bias; p_try: the chance that a mover tries in a sub-move.
        try_keys, pick_keys, order_keys: (sub-moves, R) uint64 stream keys of the three draws
            of each sub-move, per replicate.
        best, winner: (n_sites,) float64 (+inf) and int64 scratch, returned as they came.
    Returns the number of cells moved.
    """
    ndim = shape.shape[0]
    m = offsets.shape[0]
    k = movers.shape[0]
    tries = np.empty(k, dtype=np.int64)
    target = np.empty(k, dtype=np.int64)
    priority = np.empty(k, dtype=np.float64)
    cand = np.empty(m, dtype=np.int64)
    cum = np.empty(m, dtype=np.float64)
    g = np.empty(ndim, dtype=np.float64)
    moved = 0
    for sub in range(try_keys.shape[0]):
        n_try = 0
        for j in range(k):
            c = movers[j]
            r = key[c] >> ID_BITS
            if _uniform(try_keys[sub, r], key[c]) < p_try:
                tries[n_try] = c
                n_try += 1
        for t in range(n_try):  # pass 1: every try's choice, from the occupancy at the start
            c = tries[t]
            s = site[c]
            r = key[c] >> ID_BITS
            local = s - r * n_grid
            any_free = False
            for j in range(m):
                inside = True
                for a in range(ndim):
                    q = (local // strides[a]) % shape[a] + offsets[j, a]
                    if q < 0 or q >= shape[a]:
                        inside = False
                nb = s + flat_offsets[j]
                if inside and occupancy[np.uint64(nb)] == 0:
                    cand[j] = nb
                    any_free = True
                else:
                    cand[j] = -1
            target[t] = -1
            if not any_free:
                continue
            if field.size:
                norm2 = 0.0
                for a in range(ndim):
                    q = (local // strides[a]) % shape[a]
                    hi = s + strides[a] if q < shape[a] - 1 else s
                    lo = s - strides[a] if q > 0 else s
                    g[a] = np.float64(field[np.uint64(hi)]) - np.float64(field[np.uint64(lo)])
                    norm2 += g[a] * g[a]
                norm = np.sqrt(norm2)
                for a in range(ndim):
                    g[a] = g[a] / max(norm, 1e-300) if norm > 1e-12 else 0.0
                acc = np.float32(0.0)
                for j in range(m):
                    if cand[j] >= 0:
                        d = g[0] * unit[j, 0]
                        for a in range(1, ndim):
                            d = d + g[a] * unit[j, a]
                        acc = acc + np.exp(np.float32(bias * d))
                    cum[j] = acc
            else:
                acc64 = 0.0
                for j in range(m):
                    if cand[j] >= 0:
                        acc64 += 1.0
                    cum[j] = acc64
            total = cum[m - 1]
            if total > 0:
                u = _uniform(pick_keys[sub, r], key[c]) * total
                pick = 0
                for j in range(m):
                    if cum[j] <= u:
                        pick += 1
                target[t] = cand[min(pick, m - 1)]
        for t in range(n_try):  # pass 2: per site, the claimant with the lowest site + priority
            c = tries[t]
            priority[t] = _uniform(order_keys[sub, key[c] >> ID_BITS], key[c])
            if target[t] >= 0:
                v = np.float64(target[t]) + priority[t]
                ts = np.uint64(target[t])
                if v < best[ts]:
                    best[ts] = v
                    winner[ts] = t
        for t in range(n_try):  # the moves
            if target[t] >= 0:
                ts = np.uint64(target[t])
                if winner[ts] == t:
                    c = tries[t]
                    occupancy[np.uint64(site[c])] = 0
                    occupancy[ts] = code
                    site[c] = target[t]
                    moved += 1
        for t in range(n_try):
            if target[t] >= 0:
                best[np.uint64(target[t])] = np.inf
    return moved
