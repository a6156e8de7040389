"""Lattice moves shared by the populations: free neighbours, fair site claims,
biased random walks and arrivals at vessel sites.

Every choice is keyed by the counter-based RNG (cell id, tick, purpose), and two cells
wanting the same site are resolved by a random priority, so outcomes depend neither on
the order cells sit in memory nor on the order of the candidates.
"""

from __future__ import annotations

import numpy as np

from . import rng as crng


def free_neighbours(model, sites):
    """(k, m) flat Moore neighbours of ``sites`` that are inside and empty, else -1."""
    xp = model.backend.xp
    nb = model.lattice.neighbours(sites, xp)
    inside = nb >= 0
    free = xp.zeros(nb.shape, dtype=bool)
    free[inside] = model.occupancy[nb[inside]] == 0
    return xp.where(free, nb, -1)


def choose(model, candidates, keys, stream: int, weights=None):
    """One candidate per row, at random with probability proportional to ``weights``.

    Args:
        candidates: (k, m) flat sites, -1 where not available.
        keys: (k,) ids keying the random numbers.
        weights: (k, m) non-negative weights, default uniform.
    Returns (k,) chosen site, -1 where a row has no candidate.
    """
    xp = model.backend.xp
    k, m = candidates.shape
    if k == 0:
        return xp.zeros(0, dtype=xp.int64)
    u = crng.uniform(xp, model.seed, model.steps, stream, keys, m)
    # Gumbel-max: argmax(log w - log(-log u)) samples proportionally to w
    score = -xp.log(-xp.log(xp.maximum(u, 1e-300)))
    if weights is not None:
        score = score + xp.log(xp.maximum(weights, 1e-300))
    score = xp.where(candidates >= 0, score, -xp.inf)
    pick = xp.argmax(score, axis=1)
    chosen = candidates[xp.arange(k), pick]
    return xp.where(xp.isfinite(score.max(axis=1)), chosen, -1)


def resolve_conflicts(model, targets, keys, stream: int):
    """(k,) bool: which claimants get their target site. Among rows with the same
    target (>= 0) the lowest random priority wins; rows with target -1 never win."""
    xp = model.backend.xp
    k = int(targets.shape[0])
    if k == 0:
        return xp.zeros(0, dtype=bool)
    priority = crng.uniform(xp, model.seed, model.steps, stream, keys)
    order = xp.lexsort(xp.stack([priority, targets.astype(xp.float64)]))
    t = targets[order]
    first = xp.ones(k, dtype=bool)
    first[1:] = t[1:] != t[:-1]
    win = xp.zeros(k, dtype=bool)
    win[order[first]] = True
    return win & (targets >= 0)


def mean_step_sites(lattice) -> float:
    """Mean length of a Moore move, in sites (2D: 1.207, 3D: 1.41)."""
    return float(np.linalg.norm(lattice.offsets, axis=1).mean())


def gradient_direction(model, field: str, sites):
    """(k, ndim) unit gradient of ``field`` at ``sites`` (central differences, one-sided
    at faces), zero where the field is flat."""
    xp = model.backend.xp
    lat = model.lattice
    coords = xp.stack(xp.unravel_index(sites, lat.shape), axis=1)
    g = []
    for a in range(lat.ndim):
        stride = int(np.prod(lat.shape[a + 1:]))
        up = xp.where(coords[:, a] < lat.shape[a] - 1, sites + stride, sites)
        dn = xp.where(coords[:, a] > 0, sites - stride, sites)
        g.append(model.fields.at(field, up).astype(xp.float64) - model.fields.at(field, dn).astype(xp.float64))
    g = xp.stack(g, axis=1)
    norm = xp.sqrt((g * g).sum(axis=1, keepdims=True))
    return xp.where(norm > 1e-12, g / xp.maximum(norm, 1e-300), 0.0)


def walk(pop, movers, speed_um_per_min: float, field: str | None, bias: float, stream: int) -> int:
    """Biased random walk of cells ``movers`` ((k,) indices) over one tick.

    A cell makes on average ``speed * dt / (dx * mean step)`` Moore moves per tick, in
    sub-moves where every mover tries once (each with the same probability). A try
    picks a free neighbour with weight ``exp(bias * cos(angle to the gradient of
    field))``; cells wanting the same site are resolved by random priority. Returns the
    number of moves made.
    """
    model = pop.model
    xp = model.backend.xp
    lat = model.lattice
    if speed_um_per_min <= 0 or int(movers.shape[0]) == 0:
        return 0
    rate = speed_um_per_min * model.dt_min / (lat.spacing_um * mean_step_sites(lat))
    n_sub = int(np.ceil(rate))
    p_try = rate / n_sub
    unit = lat.offsets / np.linalg.norm(lat.offsets, axis=1, keepdims=True)
    unit = xp.asarray(unit)
    moved = 0
    for sub in range(n_sub):
        ids = pop.data["id"][movers]
        tries = movers[crng.uniform(xp, model.seed, model.steps, stream + 16 * sub, ids) < p_try]
        if int(tries.shape[0]) == 0:
            continue
        sites = pop.data["site"][tries]
        cand = free_neighbours(model, sites)
        weights = None
        if field is not None and bias > 0:
            ghat = gradient_direction(model, field, sites)
            weights = xp.exp(bias * (ghat @ unit.T))
        ids = pop.data["id"][tries]
        target = choose(model, cand, ids, stream + 16 * sub + 1, weights)
        win = resolve_conflicts(model, target, ids, stream + 16 * sub + 2)
        pop.move_to(tries[win], target[win])
        moved += int(win.sum())
    return moved


def arrivals_at_vessels(model, pop, rate_per_vessel_per_min: float, behaviour: str, stream: int):
    """Sites for cells arriving from blood this tick: each vessel site releases one cell
    with probability ``1 - exp(-rate * factor * dt)`` (factor: the population's rules for
    ``behaviour`` with signals at the vessel) into a random free neighbour."""
    xp = model.backend.xp
    vessels = model.vessels_dev
    if rate_per_vessel_per_min <= 0 or int(vessels.shape[0]) == 0:
        return xp.zeros(0, dtype=xp.int64)
    signals = model.sense(vessels)
    factor = pop.rules.factor(behaviour, signals, None, int(vessels.shape[0]))
    prob = -xp.expm1(-rate_per_vessel_per_min * factor * model.dt_min)
    go = crng.uniform(xp, model.seed, model.steps, stream, vessels) < prob
    src = vessels[go]
    target = choose(model, free_neighbours(model, src), src, stream + 1)
    win = resolve_conflicts(model, target, src, stream + 2)
    return target[win]
