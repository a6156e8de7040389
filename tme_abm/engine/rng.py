"""Counter-based random numbers: a hash of (seed, tick, stream, cell id, slot).

Every random draw in a tick is a pure function of the run's seed, the tick, a stream
(who draws it and what for), the cell's id and, where a cell needs several numbers, a
slot. Results therefore do not depend on the order cells sit in memory, on how work is
split, or on the backend: NumPy and CuPy compute the same uint64 arithmetic (the
splitmix64 finaliser, wrapping multiplication) and draw the same numbers.

A batch of replicates (docs/architecture.md, "The replicate axis") draws with one seed
per replicate: a key is ``replicate << ID_BITS | id`` (:func:`key_of`), and a draw uses
the seed of the key's replicate and the id below ``ID_BITS``. Replicate r of a batch
therefore draws exactly what a single run with its seed draws.

Stream numbers come from one registry (:func:`streams`): each owner (the scheduler, the
therapy timeline, each population) registers its purposes under a code of its own, and
a stream is the mixed-radix number (owner, purpose, sub-step, part), so no two
(owner, purpose, sub-step, part) share a stream, whatever the tick length.

Draws made once rather than per cell and tick (a replicate's setup: vessels and initial
cells; a patient's variability; a study's design points, task seeds and bootstrap) use
NumPy generators seeded through the same registry (:func:`generator`,
:func:`derived_seed`): a SeedSequence of (seed, registered stream, further words), so
they cannot share a sequence with each other either.
"""

from __future__ import annotations

import functools

import numpy as np

try:
    from .fused_rng import uniform_of_ids
except ImportError:  # without Numba the array code below draws on the CPU too
    uniform_of_ids = None  # type: ignore[assignment]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (host-side key setup)."""
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x


def _mix(x, xp):
    """splitmix64 finaliser on a uint64 array, in place (wraps modulo 2**64)."""
    x ^= x >> xp.uint64(30)
    x *= xp.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> xp.uint64(27)
    x *= xp.uint64(0x94D049BB133111EB)
    x ^= x >> xp.uint64(31)
    return x


ID_BITS = 40
"""Bits of a key that hold the id within its replicate (cell ids, site indices)."""
_ID_MASK = (1 << ID_BITS) - 1


def key_of(replicate, ids, xp=np):
    """Keys ``replicate << ID_BITS | ids`` ((k,) int64) of ids (< 2^40) in replicates."""
    return (xp.asarray(replicate, dtype=xp.int64) << ID_BITS) | xp.asarray(ids, dtype=xp.int64)


@functools.lru_cache(maxsize=4096)
def _stream_word(stream: int) -> int:
    """The stream's half of :func:`stream_key` (the same in every tick: cached)."""
    return _mix_int((int(stream) * 0xD1B54A32D192ED03 + 7) & _M64)


@functools.lru_cache(maxsize=256)
def _seed_tick_word(seed: int, tick: int) -> int:
    """The seed and tick's half of :func:`stream_key` (shared by every stream of a tick)."""
    return _mix_int(int(seed) ^ _mix_int((int(tick) * _GOLDEN + 1) & _M64))


@functools.lru_cache(maxsize=4096)
def stream_key(seed: int, tick: int, stream: int) -> int:
    """64-bit key of one (seed, tick, stream) triple."""
    return _mix_int(_seed_tick_word(seed, tick) ^ _stream_word(stream))


@functools.lru_cache(maxsize=64)
def _tick_keys(seeds: tuple[int, ...], tick: int) -> np.ndarray:
    """(R,) uint64: each seed mixed with the tick, the first half of :func:`stream_key`
    (shared by every stream of the tick)."""
    return _mix(np.array(seeds, dtype=np.uint64) ^ np.uint64(_mix_int((int(tick) * _GOLDEN + 1) & _M64)), np)


def stream_keys(seeds: tuple[int, ...], tick: int, stream: int) -> np.ndarray:
    """(R,) uint64 :func:`stream_key` of each seed, computed as arrays (a batch draws with
    one key per replicate in every call)."""
    return _mix(_tick_keys(seeds, tick) ^ np.uint64(_stream_word(stream)), np)


def replicate_keys(seed, tick: int, stream: int) -> np.ndarray:
    """(R,) uint64 key of (seed, tick, stream) per replicate (``seed``: an int or a tuple
    of one per replicate): what :func:`uniform` hashes a cell's id with (the compiled
    kernels take these)."""
    return _replicate_keys(seed, tick, stream)


def _replicate_keys(seed, tick: int, stream: int) -> np.ndarray:
    # apart from replicate_keys, which the compiled kernels' callers use: uniform's own
    # keys then count once where a test watches the streams drawn
    seeds = seed if isinstance(seed, tuple) else (seed,)
    if len(seeds) > 1:
        return stream_keys(seeds, tick, stream)
    return np.array([stream_key(seeds[0], tick, stream)], dtype=np.uint64)


def uniform(xp, seed, tick: int, stream: int, ids, n_slots: int | None = None):
    """Uniform floats in [0, 1): (k,) for ``ids`` (k,), or (k, n_slots) with one number
    per (id, slot).

    Args:
        xp: numpy or cupy.
        seed: the run's seed (an int), or one seed per replicate (a tuple of ints).
        tick, stream: the rest of the key (ints).
        ids: (k,) non-negative integer ids (cell ids, site indices, ...); with several
            seeds, keys (:func:`key_of`) that name the replicate of each id.
        n_slots: several independent numbers per id.
    """
    by_replicate = isinstance(seed, tuple) and len(seed) > 1
    if xp is np and n_slots is None and uniform_of_ids is not None and isinstance(ids, np.ndarray) and ids.ndim == 1:
        keys = _replicate_keys(seed, tick, stream)  # the compiled twin of the lines below
        return uniform_of_ids(np.ascontiguousarray(ids, dtype=np.uint64), keys, ID_BITS if by_replicate else 0)
    x = xp.asarray(ids).astype(xp.uint64)  # a fresh array: the steps below work in place
    if by_replicate:
        keys = stream_keys(seed, tick, stream)
        replicate = (x >> xp.uint64(ID_BITS)).astype(xp.int64)
        x &= xp.uint64(_ID_MASK)
        key = xp.asarray(keys)[replicate]
    else:
        key = xp.uint64(stream_key(seed[0] if isinstance(seed, tuple) else seed, tick, stream))
    x *= xp.uint64(_GOLDEN)
    x += key
    if n_slots is not None:
        slots = _mix(xp.arange(1, n_slots + 1, dtype=xp.uint64) * xp.uint64(0xD6E8FEB86659FD93), xp)
        x = x[:, None] ^ slots[None, :]
    x = _mix(x, xp)  # splitmix64: the finaliser of key + id * golden ratio
    x >>= xp.uint64(11)
    out = x.astype(xp.float64)
    out *= 1.0 / 9007199254740992.0
    return out


def normal(xp, seed, tick: int, stream: int, ids):
    """Standard normal floats (k,) by Box-Muller from two counter-based uniforms."""
    u = uniform(xp, seed, tick, stream, ids, n_slots=2)
    r = xp.sqrt(-2.0 * xp.log1p(-u[:, 0]))
    return r * xp.cos(2.0 * np.pi * u[:, 1])


BINOMIAL_EXACT_BELOW = 30.0
"""A binomial whose smaller tail has a mean ``n min(p, 1 - p)`` below this is drawn
exactly (inverse CDF); above it by the normal approximation with continuity correction
(error of the CDF under ~1e-2, the draws' mean and variance those of the binomial)."""


def binomial(xp, seed, tick: int, stream: int, ids, n, p, u=None):
    """(k,) float64 binomial counts Binomial(n_i, p_i) for ``ids`` (k,), counter-based
    like :func:`uniform`: one number per id from ``stream`` (or ``u``, those numbers
    drawn already by the caller), and a normal from ``stream + 1`` (the purpose's next
    part, which the caller leaves free) where the normal approximation is used.

    For ``n = 1`` the draw is ``u < p`` exactly, as a Bernoulli event of one cell is
    drawn elsewhere; for larger n the exact inverse CDF is used while the smaller tail's
    mean is below :data:`BINOMIAL_EXACT_BELOW`, the normal approximation above.

    Args:
        n: (k,) non-negative integer-valued floats (cells of a super-individual).
        p: (k,) probabilities in [0, 1], or a scalar.
    """
    n = xp.asarray(n, dtype=xp.float64)
    p = xp.broadcast_to(xp.asarray(p, dtype=xp.float64), n.shape)
    u = uniform(xp, seed, tick, stream, ids) if u is None else u
    out = xp.where(n == 1, (u < p).astype(xp.float64), 0.0)
    many = xp.flatnonzero((n > 1) & (p > 0))
    if many.size == 0:
        return out
    nm, pm, um = n[many], p[many], u[many]
    flip = pm > 0.5
    q = xp.where(flip, 1.0 - pm, pm)
    mean = nm * q
    small = mean < BINOMIAL_EXACT_BELOW
    k = xp.zeros_like(nm)
    idx = xp.flatnonzero(small)
    if idx.size:  # inverse CDF: k is the first count whose CDF reaches 1 - u
        ns, qs, v = nm[idx], q[idx], 1.0 - um[idx]
        pmf = xp.exp(ns * xp.log1p(-qs))
        cdf = pmf.copy()
        ks = xp.zeros_like(ns)
        ratio = qs / (1.0 - qs)
        limit = int(BINOMIAL_EXACT_BELOW + 12 * BINOMIAL_EXACT_BELOW ** 0.5) + 2
        for j in range(1, limit):
            more = (cdf < v) & (ks < ns)
            if xp is np and not more.any():  # on a device every step is taken: no host read
                break
            pmf = pmf * (ns - j + 1) / j * ratio
            cdf = cdf + pmf
            ks = ks + more
        k[idx] = ks
    idx = xp.flatnonzero(~small)
    if idx.size:
        z = normal(xp, seed, tick, stream + 1, ids[many[idx]])
        m, s = mean[idx], xp.sqrt(mean[idx] * (1.0 - q[idx]))
        k[idx] = xp.clip(xp.floor(m + s * z + 0.5), 0.0, nm[idx])
    out[many] = xp.where(flip, nm - k, k)
    return out


def poisson(xp, seed, tick: int, stream: int, ids, lam):
    """(k,) float64 Poisson counts of means ``lam`` ((k,) or a scalar) for ``ids`` (k,),
    counter-based like :func:`binomial`: the exact inverse CDF of one uniform per id
    from ``stream`` (at least one event exactly when ``u < 1 - exp(-lam)``) while the
    mean is below :data:`BINOMIAL_EXACT_BELOW`, the normal approximation with continuity
    correction above it (its normal from ``stream + 1``)."""
    ids = xp.asarray(ids)
    lam = xp.broadcast_to(xp.asarray(lam, dtype=xp.float64), ids.shape)
    u = uniform(xp, seed, tick, stream, ids)
    out = xp.zeros(ids.shape, dtype=xp.float64)
    small = xp.flatnonzero((lam > 0) & (lam < BINOMIAL_EXACT_BELOW))
    if small.size:  # k is the first count whose CDF reaches 1 - u
        m, v = lam[small], 1.0 - u[small]
        pmf = xp.exp(-m)
        cdf = pmf.copy()
        k = xp.zeros_like(m)
        for j in range(1, int(BINOMIAL_EXACT_BELOW + 12 * BINOMIAL_EXACT_BELOW ** 0.5) + 2):
            more = cdf < v
            if xp is np and not more.any():  # on a device every step is taken: no host read
                break
            pmf = pmf * m / j
            cdf = cdf + pmf
            k = k + more
        out[small] = k
    large = xp.flatnonzero(lam >= BINOMIAL_EXACT_BELOW)
    if large.size:
        z = normal(xp, seed, tick, stream + 1, ids[large])
        out[large] = xp.maximum(xp.floor(lam[large] + xp.sqrt(lam[large]) * z + 0.5), 0.0)
    return out


def seed_sequence(seed: int, stream: int, *words: int) -> np.random.SeedSequence:
    """The SeedSequence of (``seed``, a registered ``stream``, ``words``...): the entropy of
    every draw made once rather than per cell and tick."""
    return np.random.SeedSequence([int(seed), int(stream), *(int(w) for w in words)])


def generator(seed: int, stream: int, *words: int) -> np.random.Generator:
    """A NumPy generator for one use of (``seed``, ``stream``, ``words``...) (a replicate's
    setup, a patient's variability, a bootstrap)."""
    return np.random.default_rng(seed_sequence(seed, stream, *words))


def derived_seed(seed: int, stream: int, *words: int) -> int:
    """A seed in [0, 2^63) derived from (``seed``, ``stream``, ``words``...): a task's run
    seed, or the seed argument of a library that draws on its own (SALib)."""
    state = seed_sequence(seed, stream, *words).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def permutation(tick: int, stream: int, n: int):
    """A pseudo-random permutation of range(n) (host list) for a tick, the same in every
    run: a stage's population order, which all replicates of a batch share."""
    u = uniform(np, 0, tick, stream, np.arange(n))
    return [int(i) for i in np.argsort(u, kind="stable")]


OWNERS = 256
"""Owner codes are 0 .. OWNERS - 1; so are the purposes of one owner."""
SUB_STEPS = 1 << 20
"""Sub-steps of one purpose in a tick (moves per tick, stages, therapy items)."""
PARTS = 16
"""Draws of one sub-step (a try, a choice, a conflict, ...)."""


class Streams:
    """The random-number streams of one owner: ``streams(purpose, sub, part)`` is the
    stream number of that draw. Made by :func:`streams`, which keeps owners apart.

    Attributes:
        code: the owner's code; name: its name; purposes: its purposes in order.
    """

    def __init__(self, code: int, name: str, purposes: tuple[str, ...]):
        self.code = code
        self.name = name
        self.purposes = purposes
        self._index = {p: i for i, p in enumerate(purposes)}

    def __repr__(self) -> str:
        return f"Streams({self.code}, {self.name!r}, {self.purposes})"

    def __call__(self, purpose: str, sub: int = 0, part: int = 0) -> int:
        if purpose not in self._index:
            raise KeyError(f"{self.name}: no random-number purpose {purpose!r}; registered: {', '.join(self.purposes)}")
        if not 0 <= sub < SUB_STEPS:
            raise ValueError(f"{self.name}.{purpose}: sub-step {sub} outside 0..{SUB_STEPS - 1}")
        if not 0 <= part < PARTS:
            raise ValueError(f"{self.name}.{purpose}: part {part} outside 0..{PARTS - 1}")
        return ((self.code * OWNERS + self._index[purpose]) * SUB_STEPS + sub) * PARTS + part


_REGISTRY: dict[int, Streams] = {}


def streams(code: int, name: str, purposes: tuple[str, ...]) -> Streams:
    """Register an owner of random-number streams (at import of the module that draws).

    A code or a name that another owner holds is refused, as are repeated purposes and
    codes or purpose counts outside ``0 .. OWNERS - 1``; registering the same owner again
    returns it."""
    purposes = tuple(purposes)
    if not 0 <= code < OWNERS or not 0 < len(purposes) <= OWNERS or len(set(purposes)) != len(purposes):
        raise ValueError(f"stream owner {name!r}: code {code} must be in 0..{OWNERS - 1} with 1..{OWNERS} distinct "
                         f"purposes, got {purposes}")
    for other in _REGISTRY.values():
        if (other.code == code) != (other.name == name):
            raise ValueError(f"stream owner {name!r} (code {code}) clashes with {other.name!r} (code {other.code})")
    old = _REGISTRY.get(code)
    if old is not None:
        if old.purposes != purposes:
            raise ValueError(f"stream owner {name!r} registered twice with different purposes")
        return old
    _REGISTRY[code] = Streams(code, name, purposes)
    return _REGISTRY[code]


def registered() -> list[Streams]:
    """Every registered owner, by code."""
    return [_REGISTRY[c] for c in sorted(_REGISTRY)]
