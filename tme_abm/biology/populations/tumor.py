"""Tumor cells.

Each tumor cell on the lattice is a super-individual of ``weight`` patient cells
(:mod:`tme_abm.biology.coupling`): the rules below are those of one patient cell, and an
agent's members live and die one by one. Rates are per minute, times the ``tumor.rules``
modulators, converted to per-tick probabilities ``p = 1 - exp(-rate*dt)``:

* divide at the Gompertz birth rate ``clip(apoptosis + alpha ln(K/N), 0, divide_per_min)``
  of its replicate (:mod:`tme_abm.biology.growth`; N: alive tumor cells plus normal
  marrow cells) into a free Moore neighbour (random choice, conflicts for one site
  resolved by random priority); hypoxia arrests division (default rule); the daughter
  agent has its parent's weight (each member divided) and inherits the antigen density
  with Gaussian noise; each daughter cell loses the antigen with probability
  ``antigen.loss_per_division`` (a binomial number of them: they become the daughter
  agent, antigen-negative, and the others join their parent); a division that finds no
  free site (or loses its site to another) joins its parent too: the disease grows by
  its own law where the sample has no room;
* necrosis at ``necrosis_per_min`` scaled by the oxygen rule (zero in normoxia, full
  at anoxia); apoptosis at ``apoptosis_per_min``; CAR T killing (see car_t.py); each
  takes a binomial number of an agent's members, and the agent dies with its last;
* dead agents keep their site for ``clearance_min`` and are then removed;
* alive cells take up oxygen and secrete protons, adenosine and the chemokines, with
  the ``secrete_<field>`` rules (hypoxia raises acid, adenosine, CCL2 and CXCL8;
  IFN-gamma-like cytokine raises CXCL10).
"""

from __future__ import annotations

import numpy as np

from ...engine import rng as crng
from ...engine.moves import choose, free_neighbours, resolve_conflicts
from .. import coupling
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
    raises it); ``weight`` float64 patient cells the agent stands for (an integer; 0
    once dead).
    """

    kind = "tumor"
    code = 1
    streams = crng.streams(code, kind, ("divide", "antigen_noise", "antigen_loss", "death", "death_cause"))
    behaviours = ("divide", "necrosis", "apoptosis")
    state_signals_named = ("antigen",)
    columns = {
        "state": ("int8", ALIVE),
        "death_min": ("float64", np.nan),
        "lineage": ("int64", -1),
        "antigen": ("float64", 0.0),
        "bystander": ("float64", 1.0),
        "weight": ("float64", 1.0),
    }

    def initial_antigen(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """(k,) antigen densities of initial agents, from the config distribution (the
        pre-existing antigen-negative cells are placed at the patient's scale by
        :func:`tme_abm.model.model.rare_cells`)."""
        a = self.params.antigen
        return np.clip(rng.normal(a.mean, a.sd, k), 0.0, 1.0)

    def seed_cells(self, sites, antigen, lineage, weight) -> None:
        """Place the initial agents ((k,) sites, antigen densities, lineages and weights, host)."""
        self.add(sites, how="arrived", antigen=antigen, lineage=lineage, weight=weight)
        self.events["arrived"] = 0  # the initial tumor is not an arrival
        rep = np.asarray(sites) // self.model.lattice.n_grid
        coupling.record(self.model, "tumor_initial",
                        np.bincount(rep, weights=np.asarray(weight, dtype=float), minlength=self.model.replicates))

    @property
    def alive(self):
        return self.data["state"] == ALIVE

    def state_signals(self) -> dict:
        return {"antigen": self.data["antigen"]}

    def emission(self):
        """Alive agents secrete and take up as their weight in cells of the lattice's weight."""
        return self.alive_weight() / coupling.scale(self.model)

    def alive_weight(self):
        """(n,) float64: each agent's weight while alive, 0 once dead."""
        return self.xp.where(self.alive, self.data["weight"], 0.0)

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

    def thin(self, idx, dead, state) -> None:
        """Agents ``idx`` ((k,) distinct indices, alive) lose ``dead`` ((k,) integer-valued
        floats, at most their weights) members; those left with none die now with
        ``state`` (an int, or (k,) ints) and await clearance. Records the dead in the
        patient's ledger."""
        xp, m = self.xp, self.model
        d = self.data
        if int(idx.shape[0]) == 0:
            return
        left = d["weight"][idx] - dead
        d["weight"][idx] = left
        gone = left <= 0
        d["state"][idx[gone]] = state[gone] if getattr(state, "ndim", 0) else state
        d["death_min"][idx[gone]] = m.time_min
        self.events["died"] += int(xp.flatnonzero(gone).shape[0])
        weights = xp.zeros(len(self), dtype=xp.float64)
        weights[idx] = dead
        coupling.record_lattice(m, "tumor_died", m.weighted_count(self, weights))

    # ---- stages --------------------------------------------------------------------

    def birth_per_min(self, alive_mask):
        """(R,) device array: the Gompertz birth rate of each replicate now (1/min)."""
        m, p, xp = self.model, self.params, self.xp
        n = m.weighted_count(self, xp.where(alive_mask, self.data["weight"], 0.0)) / coupling.scale(m)
        normal = m.marrow_normal()
        if normal.any():  # a host-to-device copy only where normal marrow cells share the niche
            n = n + xp.asarray(normal)
        return gompertz_birth_per_min(n, m.capacity_dev, m.gompertz_dev, p.apoptosis_per_min,
                                      p.divide_per_min, xp)

    def divide(self) -> None:
        """Alive agents divide at their replicate's birth rate: into a free neighbour site
        (a daughter agent of the parent's weight), or, where none is free, into the parent
        (its weight doubles). Antigen-negative daughters (a binomial number of the
        parent's members) make the daughter agent; the others join the parent."""
        xp, p, m = self.xp, self.params, self.model
        mask = self.alive
        alive = xp.flatnonzero(mask)
        if alive.size == 0 or p.divide_per_min == 0:
            return
        share = self.birth_per_min(mask) / p.divide_per_min  # (R,) in [0, 1]
        share = share[m.lattice.replicate_of(self.data["site"][alive], xp)] \
            if m.replicates > 1 else xp.broadcast_to(share, alive.shape)
        parents = self.draw(alive, p.divide_per_min, "divide", "divide", scale=share)
        if parents.size == 0:
            return
        d = self.data
        born = xp.zeros(len(self), dtype=xp.float64)
        born[parents] = d["weight"][parents]
        coupling.record_lattice(m, "tumor_born", m.weighted_count(self, born))
        pid = d["id"][parents]
        target = choose(m, free_neighbours(m, d["site"][parents]), pid, self.streams("divide", part=1))
        win = resolve_conflicts(m, target, pid, self.streams("divide", part=2))
        d["weight"][parents[~win]] *= 2.0  # no room in the sample: the daughters stay with the parent
        parents, target, pid = parents[win], target[win], pid[win]
        if parents.size:
            w = d["weight"][parents]
            noise = crng.normal(xp, m.seeds, m.steps, self.streams("antigen_noise"), pid)
            antigen = xp.clip(d["antigen"][parents] + p.antigen.inheritance_sd * noise, 0.0, 1.0)
            lost = crng.binomial(xp, m.seeds, m.steps, self.streams("antigen_loss"), pid, w,
                                 p.antigen.loss_per_division)
            lost = xp.where(d["antigen"][parents] == 0, w, lost)
            some = lost > 0  # the daughter agent: the antigen-negative daughters; the others join the parent
            d["weight"][parents] += xp.where(some, w - lost, 0.0)
            self.add(target, antigen=xp.where(some, 0.0, antigen), lineage=d["lineage"][parents],
                     weight=xp.where(some, lost, w))

    def die(self) -> None:
        """Alive agents' members die by necrosis (low oxygen) or apoptosis: competing risks,
        necrosis first, a binomial number of each agent's members (for an agent of one
        cell: ``u < p_nec`` necrosis, else ``u < p_nec + p_apo (1 - p_nec)`` apoptosis,
        as for a single cell). An agent that loses its last member dies of the cause
        drawn for it."""
        xp, p, m = self.xp, self.params, self.model
        alive = xp.flatnonzero(self.alive)
        if alive.size == 0:
            return
        ids = self.data["id"][alive]
        w = self.data["weight"][alive]
        u = self.uniform("death", ids)
        # for one-cell agents the rules and the exponentials are evaluated only below the
        # largest possible probability (r_nec + r_apo) dt; larger agents may always lose some
        bound = (p.necrosis_per_min * self.rules.max_factor("necrosis")
                 + p.apoptosis_per_min * self.rules.max_factor("apoptosis")) * m.dt_min
        cand = xp.flatnonzero((u < bound * (1.0 + 1e-12)) | (w > 1))
        if cand.size == 0:
            return
        ci = alive[cand]
        p_nec = -xp.expm1(-p.necrosis_per_min * self.factor("necrosis", ci) * m.dt_min)
        p_apo = -xp.expm1(-p.apoptosis_per_min * self.factor("apoptosis", ci) * m.dt_min)
        p_any = p_nec + p_apo * (1 - p_nec)
        dead = crng.binomial(xp, m.seeds, m.steps, self.streams("death"), ids[cand], w[cand], p_any, u=u[cand])
        # the cause of an agent's last death: u < p_nec for one cell, a draw of its own otherwise
        v = xp.where(w[cand] == 1, u[cand], self.uniform("death_cause", ids[cand]) * p_any)
        state = xp.where(v < p_nec, NECROTIC, APOPTOTIC).astype(xp.int8)
        some = xp.flatnonzero(dead > 0)
        self.thin(ci[some], dead[some], state[some])

    def kill(self, idx, cells) -> None:
        """CAR T killing of ``cells`` ((k,) integer-valued floats) members of the alive
        agents ``idx`` ((k,) distinct); agents left with none are killed."""
        self.thin(idx, cells, KILLED)

    def clear(self) -> None:
        """Remove dead cells whose clearance time has passed; free their sites."""
        d = self.data
        gone = (d["state"] != ALIVE) & (self.model.time_min - d["death_min"] >= self.params.clearance_min)
        self.remove(gone, how="cleared")
