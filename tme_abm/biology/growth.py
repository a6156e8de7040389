"""Density-dependent tumor growth: Gompertz kinetics with cell loss (Norton 1988), and the
normal marrow cells that share a dispersed disease's niche (docs/model.md, "Growth").

A cell divides at the birth rate

    b(N) = clip(delta + alpha ln(K / N), 0, r_max)        [1/min]

times its rules (hypoxia arrest) and only into a free neighbour site, with N the cells
of its replicate that fill the niche (alive tumor cells plus normal marrow cells), K the
carrying capacity, alpha the Gompertz rate, delta the cell-loss rate (apoptosis) and
r_max the division rate at low density. Without other deaths the net rate is then
``min(r_max - delta, alpha ln(K/N))``: exponential growth at low density, Gompertzian
deceleration towards K, and a steady state at K where birth balances loss.
"""

from __future__ import annotations

import math

import numpy as np


def gompertz_rate_per_min(tumor) -> float:
    """The Gompertz rate alpha (1/min) of a ``tumor`` config section: its
    ``gompertz_per_min``, or, where null, the rate at which the disease doubles in
    ``doubling_days`` at the start, a ``capacity_fold`` below its capacity:
    ``ln 2 / (T_d ln(capacity_fold))`` (net of cell loss, below the division cap)."""
    if tumor.gompertz_per_min is not None:
        return float(tumor.gompertz_per_min)
    return math.log(2.0) / (tumor.doubling_days * 1440.0 * math.log(tumor.capacity_fold))


def gompertz_birth_per_min(n_cells, capacity, alpha_per_min, loss_per_min: float, r_max_per_min: float,
                           xp=np):
    """(R,) per-cell birth rate b(N) for (R,) cell counts ``n_cells``, capacities and
    Gompertz rates ``alpha_per_min`` (or one rate for all)."""
    # an empty niche (N = 0) births at r_max; its floor keeps K / N finite for any capacity
    n = xp.maximum(xp.asarray(n_cells, dtype=xp.float64), 1e-30)
    b = loss_per_min + alpha_per_min * xp.log(xp.asarray(capacity, dtype=xp.float64) / n)
    return xp.clip(b, 0.0, r_max_per_min)


def gompertz_cells(t_min, n0: float, capacity: float, alpha_per_min: float, loss_per_min: float,
                   r_max_per_min: float):
    """Expected cells at times ``t_min`` from ``n0 <= capacity`` under b(N) with loss
    delta and no other limit: exponential at ``r_max - delta`` until
    ``N* = K exp(-(r_max - delta)/alpha)``, then ``K exp(ln(N*/K) e^(-alpha (t - t*)))``."""
    t = np.asarray(t_min, dtype=np.float64)
    g = r_max_per_min - loss_per_min
    n_star = capacity * math.exp(-g / alpha_per_min)
    t_star, start = (math.log(n_star / n0) / g, n_star) if n0 < n_star else (0.0, n0)
    early = n0 * np.exp(g * t)
    late = capacity * np.exp(math.log(start / capacity) * np.exp(-alpha_per_min * (t - t_star)))
    return np.where(t < t_star, early, late)


def niche_step(normal: float, tumor: float, capacity: float, alpha_per_min: float, loss_per_min: float,
               r_max_per_min: float, dt_min: float) -> float:
    """Normal marrow cells after one tick: they grow at the net rate ``b(N) - delta`` of
    the niche they share with the tumor (N = normal + tumor), held over the tick."""
    if normal <= 0:
        return 0.0
    b = float(gompertz_birth_per_min(normal + tumor, capacity, alpha_per_min, loss_per_min, r_max_per_min))
    return normal * math.exp((b - loss_per_min) * dt_min)
