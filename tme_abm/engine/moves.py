"""Lattice moves shared by the populations: free neighbours, fair site claims and
biased random walks.

Every choice is keyed by the counter-based RNG (cell id, tick, purpose), and two cells
wanting the same site are resolved by a random priority, so outcomes depend neither on
the order cells sit in memory nor on the order of the candidates.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from . import rng as crng
from .backend import Array, Backend
from .lattice import Lattice

try:
    from .fused_walk import walk_cells
except ImportError:  # without Numba the array code walks on the CPU too
    walk_cells = None  # type: ignore[assignment]


class FieldSampler(Protocol):
    def at(self, name: str, sites: Array) -> Array:
        """(k,) values of field ``name`` at flat ``sites`` ((k,))."""
        ...

    def canonical(self, name: str) -> Array:
        """(n_sites,) field ``name`` in canonical flat order (a view where it can be)."""
        ...


class Grid(Protocol):
    """What a move needs from the model: where the arrays live, the lattice and its
    occupancy (0 free, -1 vessel, a population's code), the fields a walk climbs, the
    tick length, and what keys its random numbers (one seed per replicate, the tick)."""

    backend: Backend
    lattice: Lattice
    occupancy: Array
    """(n_sites,) int8 occupancy codes."""
    dt_min: float
    seeds: tuple[int, ...]
    steps: int

    @property
    def fields(self) -> FieldSampler: ...


class Walker(Protocol):
    """What a walk needs from a population: its model, its cell columns (``site`` and
    ``id``), its random-number streams and how it moves cells."""

    model: Grid
    code: int
    data: dict[str, Any]
    streams: crng.Streams

    def move_to(self, idx: Array, sites: Array) -> None: ...

    def moved(self, sites: Array) -> None:
        """Take ``sites`` ((n,), a new array) as the cells' sites (the occupancy grid is updated)."""
        ...


def free_neighbours(model: Grid, sites: Array) -> Array:
    """(k, m) flat Moore neighbours of ``sites`` that are inside and empty, else -1."""
    xp = model.backend.xp
    nb = model.lattice.neighbours(sites, xp)
    free = (nb >= 0) & (model.occupancy[xp.maximum(nb, 0)] == 0)
    return xp.where(free, nb, -1)


def choose(model: Grid, candidates: Array, keys: Array, stream: int, weights: Array | None = None) -> Array:
    """One candidate per row, at random with probability proportional to ``weights``.

    Args:
        candidates: (k, m) flat sites, -1 where not available.
        keys: (k,) ids keying the random numbers (one uniform per row).
        weights: (k, m) non-negative weights, default uniform.
    Returns (k,) chosen site, -1 where a row has no candidate.
    """
    xp = model.backend.xp
    k, m = candidates.shape
    if k == 0:
        return xp.zeros(0, dtype=xp.int64)
    ok = candidates.T >= 0  # (m, k): reductions over m run on contiguous rows
    w = ok.astype(xp.float64) if weights is None else xp.where(ok, weights.T, 0.0)
    cum = xp.cumsum(w, axis=0)
    total = cum[-1]
    u = crng.uniform(xp, model.seeds, model.steps, stream, keys) * total
    pick = xp.minimum((cum <= u[None, :]).sum(axis=0), m - 1)  # inverse-CDF draw
    chosen = candidates[xp.arange(k), pick]
    return xp.where(total > 0, chosen, -1)


def resolve_conflicts(model: Grid, targets: Array, keys: Array, stream: int) -> Array:
    """(k,) bool: which claimants get their target site. Among rows with the same
    target (>= 0) the lowest random priority wins; rows with target -1 never win."""
    xp = model.backend.xp
    k = int(targets.shape[0])
    if k == 0:
        return xp.zeros(0, dtype=bool)
    priority = crng.uniform(xp, model.seeds, model.steps, stream, keys)
    # sort by target, then priority: target + priority in [target, target + 1) is exact
    # enough in float64 for any lattice below 2^32 sites
    order = xp.argsort(targets.astype(xp.float64) + priority)
    t = targets[order]
    first = xp.ones(k, dtype=bool)
    first[1:] = t[1:] != t[:-1]
    win = xp.zeros(k, dtype=bool)
    win[order[first]] = True
    return win & (targets >= 0)


def mean_step_sites(lattice: Lattice) -> float:
    """Mean length of a Moore move, in sites (2D: 1.207, 3D: 1.41)."""
    return float(np.linalg.norm(lattice.offsets, axis=1).mean())


def gradient_direction(model: Grid, field: str, sites: Array) -> Array:
    """(k, ndim) unit gradient of ``field`` at ``sites`` (central differences, one-sided
    at faces), zero where the field is flat."""
    xp = model.backend.xp
    lat = model.lattice
    k = int(sites.shape[0])
    probes = []
    for a in range(lat.ndim):
        stride = int(lat.strides[a])
        c = (sites // stride) % lat.shape[a]
        probes.append(xp.where(c < lat.shape[a] - 1, sites + stride, sites))
        probes.append(xp.where(c > 0, sites - stride, sites))
    v = model.fields.at(field, xp.concatenate(probes)).astype(xp.float64).reshape(lat.ndim, 2, k)
    g = (v[:, 0, :] - v[:, 1, :]).T  # (k, ndim)
    norm = xp.sqrt((g * g).sum(axis=1, keepdims=True))
    return xp.where(norm > 1e-12, g / xp.maximum(norm, 1e-300), 0.0)


def walk(pop: Walker, movers: Array, speed_um_per_min: float, field: str | None, bias: float, purpose: str,
         fused: bool = True) -> None:
    """Biased random walk of cells ``movers`` ((k,) indices) over one tick.

    A cell makes on average ``speed * dt / (dx * mean step)`` Moore moves per tick, in
    sub-moves where every mover tries once (each with the same probability). A try
    picks a free neighbour with weight ``exp(bias * cos(angle to the gradient of
    field))``; cells wanting the same site are resolved by random priority. On NumPy the
    compiled loops of :mod:`.fused_walk` run it (``fused=False``: the array code below,
    their twin and the CuPy path).
    """
    model = pop.model
    xp = model.backend.xp
    lat = model.lattice
    if speed_um_per_min <= 0 or int(movers.shape[0]) == 0:
        return
    rate = speed_um_per_min * model.dt_min / (lat.spacing_um * mean_step_sites(lat))
    n_sub = int(np.ceil(rate))
    p_try = rate / n_sub
    unit = lat.offsets / np.linalg.norm(lat.offsets, axis=1, keepdims=True)
    if walk_cells is not None and not model.backend.is_gpu and fused:
        _walk_compiled(pop, movers, n_sub, p_try, unit, field if bias > 0 else None, bias, purpose)
        return
    unit = xp.asarray(unit)
    for sub in range(n_sub):
        ids = pop.data["id"][movers]
        tries = movers[crng.uniform(xp, model.seeds, model.steps, pop.streams(purpose, sub), ids) < p_try]
        if int(tries.shape[0]) == 0:
            continue
        sites = pop.data["site"][tries]
        cand = free_neighbours(model, sites)
        weights = None
        if field is not None and bias > 0:
            ghat = gradient_direction(model, field, sites)
            cos = ghat[:, 0:1] * unit[:, 0]  # cos(angle) to each direction, summed axis by axis (no BLAS)
            for a in range(1, lat.ndim):
                cos = cos + ghat[:, a:a + 1] * unit[:, a]
            # float32 exp is vectorised in NumPy (float64 is ~10x slower); ample for weights
            weights = xp.exp((bias * cos).astype(xp.float32))
        ids = pop.data["id"][tries]
        target = choose(model, cand, ids, pop.streams(purpose, sub, 1), weights)
        win = resolve_conflicts(model, target, ids, pop.streams(purpose, sub, 2))
        pop.move_to(tries[win], target[win])


_SCRATCH: dict[int, tuple[np.ndarray, np.ndarray]] = {}
"""Lattice size -> the compiled walk's per-site scratch (kept between calls)."""


def _walk_compiled(pop: Walker, movers: Array, n_sub: int, p_try: float, unit: np.ndarray, field: str | None,
                   bias: float, purpose: str) -> None:
    """:func:`walk` by the compiled loops of :mod:`.fused_walk` (NumPy backend)."""
    model = pop.model
    lat = model.lattice
    keys = [[crng.replicate_keys(model.seeds, model.steps, pop.streams(purpose, sub, part)) for sub in range(n_sub)]
            for part in range(3)]
    scratch = _SCRATCH.get(lat.n_sites)
    if scratch is None:
        scratch = _SCRATCH[lat.n_sites] = (np.full(lat.n_sites, np.inf), np.zeros(lat.n_sites, dtype=np.int64))
    values = np.zeros(0) if field is None else model.fields.canonical(field)
    site = pop.data["site"].copy()  # a new array: samplers may key caches on identity
    best, winner = scratch
    shape, strides, offsets, flat_offsets = lat.constants(np)
    moved = walk_cells(site, pop.data["id"], np.asarray(movers, dtype=np.int64), model.occupancy, pop.code,
                       shape, strides, lat.n_grid, offsets, flat_offsets, unit, values, float(bias), float(p_try),
                       np.array(keys[0]), np.array(keys[1]), np.array(keys[2]), best, winner)
    if moved:
        pop.moved(site)
