"""The counter-based uniform of :func:`tme_abm.engine.rng.uniform`, compiled for the CPU
(Numba): the same splitmix64 arithmetic on each id in one loop, instead of a dozen array
operations and their temporaries per draw. The array code of :mod:`.rng` is its twin
(and the CuPy path); ``tests/test_rng.py`` holds the two to the same numbers, bit for bit
(uint64 arithmetic wraps alike, and ``(x >> 11) * 2**-53`` is exact in both).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True, error_model="numpy")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SCALE = 1.0 / 9007199254740992.0


@_jit
def hashed(key, x):
    """The uniform in [0, 1) of id ``x`` (uint64) under the stream key ``key``."""
    x = x * _GOLDEN + key
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return float(x >> np.uint64(11)) * _SCALE


@_jit
def uniform_of_ids(ids, keys, id_bits):
    """(k,) uniforms of ``ids`` ((k,) uint64) under ``keys[0]``, or, with ``id_bits`` > 0
    (a batch), under the key of each id's replicate (``ids >> id_bits``) with the id
    below those bits."""
    out = np.empty(ids.size, dtype=np.float64)
    shift = np.uint64(id_bits)
    mask = (np.uint64(1) << shift) - np.uint64(1)
    for i in range(ids.size):
        x = ids[i]
        if id_bits > 0:
            out[i] = hashed(keys[x >> shift], x & mask)
        else:
            out[i] = hashed(keys[0], x)
    return out
