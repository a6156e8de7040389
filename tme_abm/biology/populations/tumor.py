"""Tumor cells.

Rules (rates per minute, times the ``tumor.rules`` modulators, converted to per-tick
probabilities ``p = 1 - exp(-rate*dt)``):

* divide at the Gompertz birth rate ``clip(apoptosis + alpha ln(K/N), 0, divide_per_min)``
  of its replicate (:mod:`tme_abm.biology.growth`; N: alive tumor cells plus normal
  marrow cells) into a free Moore neighbour (random choice, conflicts for one site
  resolved by random priority); hypoxia arrests division (default rule); the daughter
  inherits the antigen density with Gaussian noise and loses it with probability
  ``antigen.loss_per_division``;
* necrosis at ``necrosis_per_min`` scaled by the oxygen rule (zero in normoxia, full
  at anoxia); apoptosis at ``apoptosis_per_min``; CAR T killing (see car_t.py);
* dead cells keep their site for ``clearance_min`` and are then removed;
* alive cells take up oxygen and secrete protons, adenosine and the chemokines, with
  the ``secrete_<field>`` rules (hypoxia raises acid, adenosine, CCL2 and CXCL8;
  IFN-gamma-like cytokine raises CXCL10).
"""

from __future__ import annotations

import numpy as np

from ...engine import rng as crng
from ...engine.moves import choose, free_neighbours, resolve_conflicts
from ..growth import gompertz_birth_per_min
from .population import Population

ALIVE, NECROTIC, APOPTOTIC, KILLED = 0, 1, 2, 3
STATE_NAMES = {ALIVE: "alive", NECROTIC: "necrotic", APOPTOTIC: "apoptotic", KILLED: "killed"}


class TumorCells(Population):
    """All tumor cells.

    Columns (length n, on the device): ``site``, ``id``; ``state`` int8 (ALIVE,
    NECROTIC, APOPTOTIC, KILLED); ``death_min`` float64 minute of death (NaN while
    alive); ``lineage`` int64 founding-clone id; ``antigen`` float64 density in [0, 1];
    ``bystander`` float64 susceptibility to CAR T bystander killing (1; radiotherapy
    raises it).
    """

    kind = "tumor"
    code = 1
    streams = crng.streams(code, kind, ("divide", "antigen_noise", "antigen_loss", "death"))
    behaviours = ("divide", "necrosis", "apoptosis")
    state_signals_named = ("antigen",)
    columns = {
        "state": ("int8", ALIVE),
        "death_min": ("float64", np.nan),
        "lineage": ("int64", -1),
        "antigen": ("float64", 0.0),
        "bystander": ("float64", 1.0),
    }

    def initial_antigen(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """(k,) antigen densities of initial cells, from the config distribution."""
        a = self.params.antigen
        antigen = np.clip(rng.normal(a.mean, a.sd, k), 0.0, 1.0)
        antigen[rng.random(k) < a.negative_fraction] = 0.0
        return antigen

    def seed_cells(self, sites, antigen, lineage) -> None:
        """Place the initial cells ((k,) sites, antigen densities and lineages, host)."""
        self.add(sites, how="arrived", antigen=antigen, lineage=lineage)
        self.events["arrived"] = 0  # the initial tumor is not an arrival

    @property
    def alive(self):
        return self.data["state"] == ALIVE

    def state_signals(self) -> dict:
        return {"antigen": self.data["antigen"]}

    def emitting(self):
        return self.alive

    def snapshot(self) -> dict:
        out = super().snapshot()
        out.update(state=self.data["state"], lineage=self.data["lineage"],
                   antigen=self.data["antigen"].astype(self.xp.float32))
        return out

    def counts(self) -> dict:
        st = self.data["state"]
        count = self.model.count
        out = {f"tumor_{name}": count(self, st == code) for code, name in STATE_NAMES.items()}
        alive = st == ALIVE
        ag = self.data["antigen"]
        a = self.params.antigen
        out["tumor_antigen_negative"] = count(self, alive & (ag < a.negative_below))
        out["tumor_antigen_low"] = count(self, alive & (ag >= a.negative_below) & (ag < a.high_from))
        out["tumor_antigen_high"] = count(self, alive & (ag >= a.high_from))
        return out

    def antigen_negative(self):
        """(n,) bool: alive cells below ``antigen.negative_below``."""
        return (self.data["state"] == ALIVE) & (self.data["antigen"] < self.params.antigen.negative_below)

    # ---- stages --------------------------------------------------------------------

    def birth_per_min(self, alive_mask):
        """(R,) device array: the Gompertz birth rate of each replicate now (1/min)."""
        m, p, xp = self.model, self.params, self.xp
        n = m.count(self, alive_mask).astype(xp.float64)
        normal = m.marrow_normal()
        if normal.any():  # a host-to-device copy only where normal marrow cells share the niche
            n = n + xp.asarray(normal)
        return gompertz_birth_per_min(n, m.capacity_dev, p.gompertz_per_min, p.apoptosis_per_min,
                                      p.divide_per_min, xp)

    def divide(self) -> None:
        """Alive cells divide into free neighbour sites at their replicate's birth rate."""
        xp, p = self.xp, self.params
        mask = self.alive
        alive = xp.flatnonzero(mask)
        if alive.size == 0 or p.divide_per_min == 0:
            return
        share = self.birth_per_min(mask) / p.divide_per_min  # (R,) in [0, 1]
        share = share[self.model.lattice.replicate_of(self.data["site"][alive], xp)] \
            if self.model.replicates > 1 else xp.broadcast_to(share, alive.shape)
        parents = self.draw(alive, p.divide_per_min, "divide", "divide", scale=share)
        if parents.size == 0:
            return
        pid = self.data["id"][parents]
        target = choose(self.model, free_neighbours(self.model, self.data["site"][parents]), pid,
                        self.streams("divide", part=1))
        win = resolve_conflicts(self.model, target, pid, self.streams("divide", part=2))
        parents, target, pid = parents[win], target[win], pid[win]
        if parents.size == 0:
            return
        m = self.model
        noise = crng.normal(xp, m.seeds, m.steps, self.streams("antigen_noise"), pid)
        antigen = xp.clip(self.data["antigen"][parents] + p.antigen.inheritance_sd * noise, 0.0, 1.0)
        lost = self.uniform("antigen_loss", pid) < p.antigen.loss_per_division
        antigen = xp.where(lost | (self.data["antigen"][parents] == 0), 0.0, antigen)
        self.add(target, antigen=antigen, lineage=self.data["lineage"][parents])

    def die(self) -> None:
        """Alive cells die by necrosis (low oxygen) or apoptosis."""
        xp, p, m = self.xp, self.params, self.model
        alive = xp.flatnonzero(self.alive)
        if alive.size == 0:
            return
        u = self.uniform("death", self.data["id"][alive])
        # competing risks, necrosis first: u < p_nec, else u < p_nec + p_apo (1 - p_nec);
        # both are below the largest possible (r_nec + r_apo) dt, so the rules and the
        # exponentials are evaluated for those candidates only
        bound = (p.necrosis_per_min * self.rules.max_factor("necrosis")
                 + p.apoptosis_per_min * self.rules.max_factor("apoptosis")) * m.dt_min
        cand = xp.flatnonzero(u < bound * (1.0 + 1e-12))
        ci = alive[cand]
        p_nec = -xp.expm1(-p.necrosis_per_min * self.factor("necrosis", ci) * m.dt_min)
        p_apo = -xp.expm1(-p.apoptosis_per_min * self.factor("apoptosis", ci) * m.dt_min)
        uc = u[cand]
        nec = uc < p_nec
        apo = ~nec & (uc < p_nec + p_apo * (1 - p_nec))
        self.data["state"][alive[cand[nec]]] = NECROTIC
        self.data["state"][alive[cand[apo]]] = APOPTOTIC
        died = alive[cand[nec | apo]]
        self.data["death_min"][died] = m.time_min
        self.events["died"] += int(died.shape[0])

    def kill(self, idx) -> None:
        """CAR T killing of cells ``idx`` (alive): they die now and await clearance."""
        self.data["state"][idx] = KILLED
        self.data["death_min"][idx] = self.model.time_min
        self.events["died"] += int(idx.shape[0])

    def clear(self) -> None:
        """Remove dead cells whose clearance time has passed; free their sites."""
        d = self.data
        gone = (d["state"] != ALIVE) & (self.model.time_min - d["death_min"] >= self.params.clearance_min)
        self.remove(gone, how="cleared")
