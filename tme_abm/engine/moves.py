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


class FieldSampler(Protocol):
    def at(self, name: str, sites: Array) -> Array:
        """(k,) values of field ``name`` at flat ``sites`` ((k,))."""
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
    data: dict[str, Any]
    streams: crng.Streams

    def move_to(self, idx: Array, sites: Array) -> None: ...


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


def walk(pop: Walker, movers: Array, speed_um_per_min: float, field: str | None, bias: float, purpose: str) -> None:
    """Biased random walk of cells ``movers`` ((k,) indices) over one tick.

    A cell makes on average ``speed * dt / (dx * mean step)`` Moore moves per tick, in
    sub-moves where every mover tries once (each with the same probability). A try
    picks a free neighbour with weight ``exp(bias * cos(angle to the gradient of
    field))``; cells wanting the same site are resolved by random priority.
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
            # float32 exp is vectorised in NumPy (float64 is ~10x slower); ample for weights
            weights = xp.exp((bias * (ghat @ unit.T)).astype(xp.float32))
        ids = pop.data["id"][tries]
        target = choose(model, cand, ids, pop.streams(purpose, sub, 1), weights)
        win = resolve_conflicts(model, target, ids, pop.streams(purpose, sub, 2))
        pop.move_to(tries[win], target[win])
