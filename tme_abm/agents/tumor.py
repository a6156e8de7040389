"""Tumor cells as one struct-of-arrays population (first, oxygen-driven biology).

Rules (all rates per minute, converted to per-tick probabilities p = 1 - exp(-rate*dt)):

* division: ``cycle_rate * clip((O2 - arrest) / (saturation - arrest), 0, 1)`` into a
  free Moore neighbour chosen at random; two cells choosing the same site are
  resolved by random priority, so the result does not depend on cell order;
* necrosis: ``max_rate * clip((threshold - O2) / (threshold - max), 0, 1)`` (PhysiCell's
  ramp); apoptosis at a constant base rate;
* dead cells keep their site for ``clearance_min`` and are then removed.
"""

from __future__ import annotations

import mesa
import numpy as np

from ..config import TumorConfig

ALIVE, NECROTIC, APOPTOTIC = 0, 1, 2
STATE_NAMES = {ALIVE: "alive", NECROTIC: "necrotic", APOPTOTIC: "apoptotic"}


def rate_to_prob(rate_per_min, dt_min: float, xp=np):
    """Per-tick event probability for a Poisson rate: ``1 - exp(-rate * dt)``."""
    return -xp.expm1(-xp.asarray(rate_per_min) * dt_min)


class TumorCells(mesa.Agent):
    """All tumor cells of a model.

    Arrays (length = number of cells, on the backend device):
        site: int64 flat lattice index.
        state: int8 ALIVE / NECROTIC / APOPTOTIC.
        death_min: float64 simulated minute of death (NaN while alive).
        lineage: int64 id of the founding clone.
    """

    code = 1  # value in the model's occupancy grid

    def __init__(self, model, params: TumorConfig, sites):
        super().__init__(model)
        xp = model.backend.xp
        self.params = params
        self.xp = xp
        k = len(sites)
        self.site = xp.asarray(sites, dtype=xp.int64)
        self.state = xp.zeros(k, dtype=xp.int8)
        self.death_min = xp.full(k, np.nan)
        self.lineage = xp.arange(k, dtype=xp.int64)

    def __len__(self) -> int:
        return int(self.site.shape[0])

    @property
    def alive(self):
        return self.state == ALIVE

    def counts(self) -> dict[str, int]:
        st = self.model.backend.to_host(self.state)
        return {f"tumor_{name}": int((st == code).sum()) for code, name in STATE_NAMES.items()}

    # ---- stages --------------------------------------------------------------------

    def divide(self, o2, dt_min: float, rng: np.random.Generator) -> int:
        """Alive cells divide into free neighbour sites. Returns the number of births.

        Args:
            o2: (n_cells,) oxygen at each cell's site, mmHg.
        """
        xp, p, m = self.xp, self.params, self.model
        span = p.proliferation_saturation_mmHg - p.proliferation_arrest_mmHg
        drive = xp.clip((o2 - p.proliferation_arrest_mmHg) / span, 0.0, 1.0)
        prob = rate_to_prob(p.cycle_rate_per_min * drive, dt_min, xp)
        u = xp.asarray(rng.random(len(self)))
        parents = xp.flatnonzero(self.alive & (u < prob))
        if parents.size == 0:
            return 0
        nb = m.lattice.neighbours(self.site[parents], xp)  # (k, m)
        free = nb >= 0
        free[free] = m.occupancy[nb[free]] == 0
        score = xp.asarray(rng.random(nb.shape))
        score = xp.where(free, score, -1.0)
        choice = xp.argmax(score, axis=1)
        has_room = score.max(axis=1) >= 0
        parents, target = parents[has_room], nb[xp.arange(nb.shape[0]), choice][has_room]
        if parents.size == 0:
            return 0
        # Conflicts for one site: the lowest random priority wins (order independent).
        priority = xp.asarray(rng.random(int(parents.size)))
        order = xp.lexsort(xp.stack([priority, target.astype(xp.float64)]))
        t_sorted = target[order]
        first = xp.ones(t_sorted.shape, dtype=bool)
        first[1:] = t_sorted[1:] != t_sorted[:-1]
        winners = order[first]
        parents, target = parents[winners], target[winners]
        self.site = xp.concatenate([self.site, target])
        self.state = xp.concatenate([self.state, xp.zeros(target.shape, xp.int8)])
        self.death_min = xp.concatenate([self.death_min, xp.full(target.shape, np.nan)])
        self.lineage = xp.concatenate([self.lineage, self.lineage[parents]])
        m.occupancy[target] = self.code
        return int(target.size)

    def die(self, o2, now_min: float, dt_min: float, rng: np.random.Generator) -> int:
        """Alive cells die by necrosis (low oxygen) or apoptosis. Returns deaths."""
        xp, p = self.xp, self.params
        ramp = (p.necrosis_threshold_mmHg - o2) / (p.necrosis_threshold_mmHg - p.necrosis_max_mmHg)
        p_nec = rate_to_prob(p.necrosis_max_rate_per_min * xp.clip(ramp, 0.0, 1.0), dt_min, xp)
        p_apo = float(rate_to_prob(p.apoptosis_rate_per_min, dt_min))
        u = xp.asarray(rng.random(len(self)))
        alive = self.alive
        necrotic = alive & (u < p_nec)
        apoptotic = alive & ~necrotic & (u < p_nec + p_apo)
        self.state = xp.where(necrotic, NECROTIC, xp.where(apoptotic, APOPTOTIC, self.state)).astype(xp.int8)
        died = necrotic | apoptotic
        self.death_min = xp.where(died, now_min, self.death_min)
        return int(died.sum())

    def clear(self, now_min: float) -> int:
        """Remove dead cells whose clearance time has passed; free their sites."""
        xp = self.xp
        gone = (self.state != ALIVE) & (now_min - self.death_min >= self.params.clearance_min)
        if not bool(gone.any()):
            return 0
        self.model.occupancy[self.site[gone]] = 0
        keep = ~gone
        self.site, self.state = self.site[keep], self.state[keep]
        self.death_min, self.lineage = self.death_min[keep], self.lineage[keep]
        return int(gone.sum())
