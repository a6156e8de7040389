"""CAR T cells.

Rules (rates per minute, times the ``car_t.rules`` modulators; gene edits of the
product remove or change named modulators, for CAR T cells only):

* arrive at vessel sites at the blood effector concentration of their product times the
  extravasation volume (``patient.extravasation_ul_per_min``, marrow homing): a lattice
  vessel stands for s of the patient's, so a Poisson number of cells of s times that
  mean arrives there in a tick, as one agent that holds them (its ``weight``; the
  founders of the disease's CAR T are counted one by one), taken from the patient's
  blood (never more than it has); plus a constant ``arrival_per_vessel_per_min`` of
  agents of weight s from outside the patient (tests, ablations);
* move by a random walk biased up the CXCL10-like gradient (``move``); engaged cells
  stay;
* engage: a free, non-exhausted cell next to alive, unengaged tumor cells picks one at
  random and engages it at ``engage_per_min`` x rules (the ``antigen`` modulator reads
  the target's antigen density: antigen-negative cells are never engaged); one CAR T
  per target, conflicts by random priority;
* an engagement lasts ``engagement_min``; at its end each of the target's members met
  by one of the cell's (``min(s, weight)`` pairs: a super-individual of s CAR T meets
  at most s of its target's cells) is killed with ``kill_probability`` x ``kill`` rules
  (adenosine, acidity, hypoxia, myeloid contact, ...; a binomial number), exhaustion
  rises by ``exhaustion_per_engagement`` x ``exhaust`` rules and the cell is primed to
  divide with ``divide_probability`` x ``divide`` rules while it has divisions left,
  both x the share of its members that met a target, ``min(1, weight / s)``;
* a share ``exhaustion_irreversible`` of each engagement's exhaustion is permanent; the
  rest decays at ``exhaustion_recovery_per_min`` while the cell is not engaged; a cell
  whose exhaustion reaches 1 is exhausted until rest brings it below
  ``exhaustion_recovered`` (rest restores function, Weber 2021);
* where target cells are killed, each member of an alive antigen-negative tumor agent
  next to it dies too with ``bystander_kill_probability`` times its susceptibility
  (FAS / IFN-gamma bystander killing, Upadhyay 2021; radiotherapy raises the
  susceptibility, DeSelm 2018);
* exhausted cells neither engage nor divide, and die faster (the
  ``death`` rule on exhaustion); base death ``death_per_min`` (lifespan ~9.5 days), a
  binomial number of an agent's members (the agent goes with its last);
* engaged cells secrete the IFN-gamma-like cytokine (``secrete_cytokine`` rules);
* free cells next to a vessel site leave the lattice at ``egress_per_min`` x
  ``egress`` rules and return to the patient's blood as s effectors of their product.

Each agent is a super-individual of ``weight`` patient cells that move, engage, exhaust
and divide together: an agent of at most half the lattice's weight s grows in place (its
weight doubles), a larger one divides into a daughter agent of its weight, so agents
founded by a few cells grow to the sample's weight before they take more sites (the
sample keeps the whole's density of CAR T). Every arrival,
division, death and egress is a flow of its cells in the patient's ledger
(:mod:`tme_abm.biology.coupling`).
"""

from __future__ import annotations

import math

import numpy as np

from ...engine import rng as crng
from ...engine.lattice import VESSEL
from ...engine.moves import choose, free_neighbours, resolve_conflicts, walk
from .. import coupling
from ..rules import RuleSet, apply_edits
from .population import Population, index_mask, rate_to_prob
from .tumor import ALIVE


def days_to_exhaustion(engagements_per_day: float, increment: float, irreversible: float,
                       recovery_per_min: float, engagement_min: float, max_days: float = 3650.0) -> float:
    """Days until a cell engaged at a steady ``engagements_per_day`` reaches exhaustion 1
    under the engagement and rest rules: each engagement of ``engagement_min`` adds
    ``increment`` (exhaustion_per_engagement x the exhaust rules), ``irreversible`` of it
    permanent, and the rest decays at ``recovery_per_min`` over the free time between
    engagements; inf if it does not within ``max_days``."""
    cycle = 1440.0 / engagements_per_day
    if increment <= 0 or cycle < engagement_min:
        raise ValueError(f"need increment > 0 and engagements shorter than the cycle ({cycle:g} min)")
    keep = math.exp(-recovery_per_min * (cycle - engagement_min))
    fixed = reversible = 0.0
    for k in range(int(max_days * engagements_per_day) + 1):
        fixed += irreversible * increment
        reversible += (1.0 - irreversible) * increment
        if fixed + reversible >= 1.0 - 1e-9:
            return (k * cycle + engagement_min) / 1440.0
        reversible *= keep
    return math.inf


def car_t_rules(rules: dict, edits: dict, products, xp) -> RuleSet:
    """CAR T rules with each product's gene edits applied (one row per product).

    Args:
        rules: the CAR T rules (behaviour -> name -> modulator).
        edits: every defined gene edit by name (the config's ``edits``).
        products: the products (``patient.Product``), each naming its edits.
    """
    return RuleSet([apply_edits(rules, [edits[e] for e in p.edits]) for p in products], xp)


class CarTCells(Population):
    """All CAR T cells.

    Columns: ``site``, ``id``; ``exhaustion`` float64 in [0, 1], its permanent part
    ``exhaustion_fixed`` and ``exhausted`` int8 (1 from reaching 1 until rest brings it
    below ``exhaustion_recovered``); ``divisions_left``
    int16; ``kills`` int32; ``engaged_until`` float64 minute the current engagement
    ends (NaN when free); ``target`` int64 id of the engaged tumor cell (-1);
    ``primed`` int8, 1 when an engagement triggered a division not yet made;
    ``product`` int8 index of the product (its edits); ``birth_min`` float64;
    ``weight`` float64 patient cells the agent stands for (an integer); ``origin``
    int32 index of the vessel it arrived at from blood (-1: placed, or born).
    """

    key_columns = ("target",)
    _killed = None  # (R,) kills of this tick (device), read by the systemic stage

    kind = "car_t"
    code = 2
    streams = crng.streams(code, kind, ("arrive", "move", "pick", "engage", "kill", "prime", "divide", "egress",
                                        "death", "bystander", "arrive_outside"))
    behaviours = ("arrive", "move", "engage", "kill", "divide", "exhaust", "death", "egress")
    state_signals_named = ("exhaustion", "antigen")  # antigen: the engaged target's
    supplied_signals = frozenset({"antigen"})  # the engaged target's antigen density
    columns = {
        "exhaustion": ("float64", 0.0),
        "exhaustion_fixed": ("float64", 0.0),
        "exhausted": ("int8", 0),
        "divisions_left": ("int16", 0),
        "kills": ("int32", 0),
        "engaged_until": ("float64", np.nan),
        "target": ("int64", -1),
        "primed": ("int8", 0),
        "product": ("int8", 0),
        "birth_min": ("float64", 0.0),
        "weight": ("float64", 1.0),
        "origin": ("int32", -1),
    }

    def new_cell_state(self, sites, product=0, weight=None, origin=None) -> dict:
        """Columns of new agents at ``sites`` ((k,) host) of ``product`` (an int, or (k,)
        ints): the initial exhaustion and divisions of that product in each agent's
        replicate (they depend on the patient at infusion, see systemic.Product),
        ``weight`` ((k,), default the lattice's weight s) and the vessel they arrived at
        from blood (``origin``, (k,) vessel indices; default -1, none)."""
        m = self.model
        sites = np.asarray(sites)
        k = len(sites)
        rep = sites // m.lattice.n_grid
        product = np.broadcast_to(np.asarray(m.backend.to_host(product), dtype=np.int64), (k,))
        # (R, P) per replicate and product
        exhaustion = np.array([[p.initial_exhaustion for p in r.systemic.products] for r in m.replicas], dtype=float)
        divisions = np.array([[p.divisions for p in r.systemic.products] for r in m.replicas], dtype=np.int16)
        return {"exhaustion": exhaustion[rep, product], "exhaustion_fixed": exhaustion[rep, product],
                "exhausted": (exhaustion[rep, product] >= 1.0 - 1e-9).astype(np.int8),
                "divisions_left": divisions[rep, product],
                "product": product.astype(np.int8), "birth_min": np.full(k, m.time_min),
                "weight": np.full(k, coupling.scale(m)) if weight is None else np.asarray(weight, dtype=float),
                "origin": np.full(k, -1, dtype=np.int32) if origin is None else np.asarray(origin, dtype=np.int32)}

    @property
    def engaged(self):
        return ~self.xp.isnan(self.data["engaged_until"])

    @property
    def exhausted(self):
        return self.data["exhausted"] == 1

    def reset_events(self) -> None:
        super().reset_events()
        self._killed = None

    def killed_now(self):
        """(R,) int64 device array: tumor cells killed by CAR T in this tick, per replicate."""
        if self._killed is None:
            return self.xp.zeros(self.model.replicates, dtype=self.xp.int64)
        return self._killed

    def state_signals(self) -> dict:
        return {"exhaustion": self.data["exhaustion"]}

    def emission(self):
        """Agents secrete and take up as their weight in cells of the lattice's weight."""
        return self.data["weight"] / coupling.scale(self.model)

    def secretion_gate(self, field: str):
        if field == "cytokine":
            return self.engaged.astype(self.xp.float64)
        return 1.0

    def snapshot(self) -> dict:
        """State 0 effector, 1 engaged, 2 exhausted."""
        xp = self.xp
        out = super().snapshot()
        state = xp.where(self.exhausted, 2, xp.where(self.engaged, 1, 0)).astype(xp.int8)
        out.update(state=state, exhaustion=self.data["exhaustion"].astype(xp.float32))
        return out

    def counts(self) -> dict:
        ex = self.exhausted
        count = self.model.count
        return {"car_t_effector": count(self, ~ex), "car_t_exhausted": count(self, ex),
                "car_t_engaged": count(self, self.engaged), "car_t_kills": count(self, weights=self.data["kills"])}

    # ---- stages --------------------------------------------------------------------

    def arrive(self) -> None:
        """Arrivals at vessel sites. From blood: each lattice vessel stands for s of the
        patient's, so a Poisson number of each replicate's blood effectors arrives there
        in a tick (``Systemic.arrival_rate_per_vessel`` x s x dt), all of product p with
        p's share of blood effectors. They join the agent that last arrived at that vessel
        while it is untouched (not yet engaged, exhaustion and divisions those of arrival)
        and has room below s, else form a new agent in a free neighbour site (none free:
        they do not arrive). So the founders of the disease's CAR T are counted one by one
        when few arrive, and agents hold about s cells when many do (the sample keeps the
        whole's density of CAR T). What arrives is taken from blood (never more than a
        product's pool holds: the last arrivals in key order are trimmed). Plus the
        config's constant ``arrival_per_vessel_per_min`` (agents of weight s, product 0,
        from outside the patient)."""
        m = self.model
        s = coupling.scale(m)
        systemic = [rep.systemic for rep in m.replicas]
        blood_rate = np.array([x.arrival_rate_per_vessel().sum() for x in systemic])
        if (blood_rate > 0).any():
            vessel, cells, target = self.arrivals_at_vessels(blood_rate, "arrive", "arrive", cells=s)
            self._from_blood(vessel, cells, target, systemic)
        constant = self.params.arrival_per_vessel_per_min
        if constant > 0:
            sites = self.arrivals_at_vessels(constant, "arrive", "arrive_outside")
            host = m.backend.to_host(sites)
            coupling.record(m, "placed", np.bincount(host // m.lattice.n_grid, minlength=m.replicates) * s)
            if len(host):
                self.add(sites, how="arrived", **self.new_cell_state(host, 0))

    def _from_blood(self, vessel, cells, target, systemic) -> None:
        """Place arrivals from blood: ``vessel`` ((k,) indices into the model's vessel
        sites), ``cells`` ((k,) patient cells) and ``target`` ((k,) a free site won for
        each, -1 for none), host arrays."""
        m, xp = self.model, self.xp
        vessel, cells, target = (np.asarray(m.backend.to_host(a)) for a in (vessel, cells, target))
        cells = cells.astype(float)
        if len(vessel) == 0:
            return
        keys = m.backend.to_host(m.vessel_keys)[vessel]
        rep = m.backend.to_host(m.vessels_dev)[vessel] // m.lattice.n_grid
        product = np.zeros(len(vessel), dtype=np.int64)
        for r in np.unique(rep):
            mine = np.flatnonzero(rep == r)
            pools = systemic[r].effectors()
            v = crng.uniform(np, m.seeds, m.steps, self.streams("arrive", part=4), keys[mine])
            product[mine] = np.minimum(np.searchsorted(np.cumsum(pools) / pools.sum(), v, side="right"),
                                       len(pools) - 1)
        into = self._current_agent(vessel, product, cells)
        arriving = (into >= 0) | (target >= 0)
        for r in np.unique(rep):  # what each product's pool holds, in key order
            for p in np.unique(product[rep == r]):
                wanted = np.flatnonzero(arriving & (rep == r) & (product == p))
                wanted = wanted[np.argsort(keys[wanted])]
                ahead = np.cumsum(cells[wanted]) - cells[wanted]
                cells[wanted] = np.clip(np.floor(systemic[r].effectors()[p]) - ahead, 0.0, cells[wanted])
                systemic[r].take(int(p), float(cells[wanted].sum()))
        join = arriving & (into >= 0) & (cells > 0)
        if join.any():
            add = np.zeros(len(self))
            np.add.at(add, into[join], cells[join])
            self.data["weight"] += xp.asarray(add)
        new = arriving & ~join & (target >= 0) & (cells > 0)
        if new.any():
            self.add(xp.asarray(target[new]), how="arrived",
                     **self.new_cell_state(target[new], product[new], cells[new], origin=vessel[new]))

    def _current_agent(self, vessel, product, cells) -> np.ndarray:
        """(k,) index of the agent that last arrived at each of ``vessel`` ((k,) host)
        if it is untouched, of ``product`` and has room for ``cells`` below s; else -1."""
        m = self.model
        if len(self) == 0:
            return np.full(len(vessel), -1, dtype=np.int64)
        d = {c: m.backend.to_host(self.data[c]) for c in ("origin", "product", "weight", "kills", "engaged_until",
                                                           "exhaustion", "divisions_left", "id", "site")}
        untouched = self.new_cell_state(d["site"], d["product"])
        fresh = ((d["origin"] >= 0) & (d["kills"] == 0) & np.isnan(d["engaged_until"])
                 & (d["exhaustion"] == untouched["exhaustion"]) & (d["divisions_left"] == untouched["divisions_left"]))
        idx = np.flatnonzero(fresh)
        latest = np.full(int(m.vessels_dev.shape[0]), -1, dtype=np.int64)
        order = idx[np.argsort(d["id"][idx], kind="stable")]  # the last arrival at a vessel wins
        latest[d["origin"][order]] = order
        into = latest[vessel]
        ok = (into >= 0) & (d["product"][np.maximum(into, 0)] == product) & \
            (d["weight"][np.maximum(into, 0)] + cells <= coupling.scale(m))
        return np.where(ok, into, -1)

    def move(self) -> None:
        mv = self.params.move
        movers = self.xp.flatnonzero(~self.engaged)
        walk(self, movers, mv.speed_um_per_min, mv.chemotaxis_field, mv.chemotaxis_bias, "move")

    def finish_engagements(self) -> None:
        """Engagements ending this tick: kill, exhaust, prime for division."""
        xp, p, m = self.xp, self.params, self.model
        d = self.data
        ending = xp.flatnonzero(d["engaged_until"] <= m.time_min)
        if ending.size == 0:
            return
        tumor = m.tumor
        ids = d["id"][ending]
        pos = tumor.index_of(d["target"][ending])  # the target, if it still exists
        alive = (pos >= 0) & (tumor.data["state"][xp.maximum(pos, 0)] == 0)
        safe = xp.maximum(pos, 0)
        # the pairs a super-individual of s CAR T forms with its target's members, and
        # the share of its members that met one
        weight = d["weight"][ending]
        pairs = xp.where(alive, xp.minimum(tumor.data["weight"][safe], weight), 0.0)
        met = xp.where(alive, pairs / weight, 1.0)
        p_kill = self.rate("kill_probability", ending) * self.factor("kill", ending)
        killed = crng.binomial(xp, m.seeds, m.steps, self.streams("kill"), ids, pairs, xp.minimum(p_kill, 1.0))
        kill = killed > 0
        victims, cells = pos[kill], killed[kill]
        before = tumor.alive_weight()
        tumor.kill(victims, cells)
        if p.bystander_kill_probability > 0 and victims.size:
            self.bystanders(victims)
        self._killed = m.weighted_count(tumor, before - tumor.alive_weight())
        d["kills"][ending[kill]] += 1
        inc = self.rate("exhaustion_per_engagement", ending) * self.factor("exhaust", ending) * met
        d["exhaustion"][ending] = xp.minimum(d["exhaustion"][ending] + inc, 1.0)
        d["exhaustion_fixed"][ending] = xp.minimum(d["exhaustion_fixed"][ending] + p.exhaustion_irreversible * inc,
                                                   d["exhaustion"][ending])
        d["exhausted"][ending] = xp.where(d["exhaustion"][ending] >= 1.0 - 1e-9, 1, d["exhausted"][ending])
        p_div = self.rate("divide_probability", ending) * self.factor("divide", ending) * met
        prime = (self.uniform("prime", ids) < p_div) & (d["divisions_left"][ending] > 0)
        d["primed"][ending[prime]] = 1
        d["engaged_until"][ending] = np.nan
        d["target"][ending] = -1

    def bystanders(self, victims) -> None:
        """Bystander killing around the agents ``victims`` ((k,) tumor indices, distinct)
        whose cells were killed now: each member of an alive antigen-negative tumor agent
        next to j of them dies with probability ``1 - (1 - p s)^j`` (p the bystander
        probability, s its susceptibility ``tumor.bystander``), a binomial number per
        agent; nothing here waits for the device."""
        xp, m = self.xp, self.model
        tumor = m.tumor
        d = tumor.data
        n = len(tumor)
        nb = m.lattice.neighbours(d["site"][victims], xp)  # (k, M)
        tix = m.site_owner(tumor)[xp.maximum(nb, 0)]
        tix = xp.where(nb >= 0, tix, -1).reshape(-1)
        safe = xp.maximum(tix, 0)
        hit = (tix >= 0) & (d["state"][safe] == ALIVE) & (d["antigen"][safe] < tumor.params.antigen.negative_below)
        j = xp.bincount(xp.where(hit, safe, n), minlength=n + 1)[:n]  # adjacent victims per agent
        near = xp.flatnonzero(j > 0)
        if near.size == 0:
            return
        p_one = xp.minimum(self.params.bystander_kill_probability * d["bystander"][near], 1.0)
        p_any = 1.0 - (1.0 - p_one) ** j[near]
        dead = crng.binomial(xp, m.seeds, m.steps, self.streams("bystander"), d["id"][near], d["weight"][near],
                             p_any)
        some = dead > 0
        tumor.kill(near[some], dead[some])

    def rest(self) -> None:
        """Free cells recover the reversible part of their exhaustion: it decays by
        ``exp(-exhaustion_recovery_per_min * dt)`` per tick; exhausted cells regain
        function below ``exhaustion_recovered`` (Weber 2021)."""
        xp, p, d = self.xp, self.params, self.data
        if len(self) == 0 or p.exhaustion_recovery_per_min == 0:
            return
        keep = float(np.exp(-p.exhaustion_recovery_per_min * self.model.dt_min))
        fixed = d["exhaustion_fixed"]
        d["exhaustion"] = xp.where(self.engaged, d["exhaustion"], fixed + (d["exhaustion"] - fixed) * keep)
        d["exhausted"] = xp.where(d["exhaustion"] < p.exhaustion_recovered, 0, d["exhausted"]).astype(xp.int8)

    def engage(self) -> None:
        """Free, non-exhausted cells engage an alive, unengaged tumor neighbour."""
        xp, p, m = self.xp, self.params, self.model
        d = self.data
        cand = xp.flatnonzero(~self.engaged & ~self.exhausted)
        tumor = m.tumor
        if cand.size == 0 or len(tumor) == 0:
            return
        owner = m.site_owner(tumor)  # (n_sites,) tumor index or -1
        taken = xp.zeros(len(tumor), dtype=bool)
        pos = tumor.index_of(d["target"][self.engaged])
        taken[pos[pos >= 0]] = True
        nb = m.lattice.neighbours(d["site"][cand], xp)
        tix = xp.where(nb >= 0, owner[xp.maximum(nb, 0)], -1)
        ok = tix >= 0
        ok[ok] = (tumor.data["state"][tix[ok]] == 0) & ~taken[tix[ok]]
        tix = xp.where(ok, tix, -1)
        ids = d["id"][cand]
        pick = choose(m, tix, ids, self.streams("pick"))  # a tumor index, or -1
        has = pick >= 0
        cand, pick, ids = cand[has], pick[has], ids[has]
        if cand.size == 0:
            return
        rate = self.rate("engage_per_min", cand) * self.factor("engage", cand, {"antigen": tumor.data["antigen"][pick]})
        go = self.uniform("engage", ids) < rate_to_prob(rate, m.dt_min, xp)
        cand, pick, ids = cand[go], pick[go], ids[go]
        win = resolve_conflicts(m, pick, ids, self.streams("engage", part=1))
        cand, pick = cand[win], pick[win]
        d["engaged_until"][cand] = m.time_min + p.engagement_min
        d["target"][cand] = tumor.data["id"][pick]

    def divide(self) -> None:
        """Primed, non-exhausted, free agents with divisions left divide: in place (their
        weight doubles) while it is at most half the lattice's weight s, else into a free
        neighbour (a daughter agent of their weight)."""
        xp, m = self.xp, self.model
        d = self.data
        par = xp.flatnonzero((d["primed"] == 1) & ~self.engaged & ~self.exhausted & (d["divisions_left"] > 0))
        if par.size == 0:
            return
        small = 2.0 * d["weight"][par] <= coupling.scale(m)
        grow = par[small]
        if grow.size:
            born = xp.zeros(len(self), dtype=xp.float64)
            born[grow] = d["weight"][grow]
            coupling.record_lattice(m, "lattice_born", m.weighted_count(self, born))
            d["weight"][grow] *= 2.0
            d["divisions_left"][grow] -= 1
            d["primed"][grow] = 0
            par = par[~small]
            if par.size == 0:
                return
        pid = d["id"][par]
        target = choose(m, free_neighbours(m, d["site"][par]), pid, self.streams("divide", part=1))
        win = resolve_conflicts(m, target, pid, self.streams("divide", part=2))
        par, target = par[win], target[win]
        if par.size == 0:
            return
        d["divisions_left"][par] -= 1
        d["primed"][par] = 0
        born = xp.zeros(len(self), dtype=xp.float64)
        born[par] = d["weight"][par]
        coupling.record_lattice(m, "lattice_born", m.weighted_count(self, born))
        self.add(target, exhaustion=d["exhaustion"][par], exhaustion_fixed=d["exhaustion_fixed"][par],
                 exhausted=d["exhausted"][par],
                 divisions_left=d["divisions_left"][par], product=d["product"][par],
                 birth_min=xp.full(par.shape, m.time_min), weight=d["weight"][par])

    def egress(self) -> None:
        """Free cells next to a vessel leave the lattice for the blood pool."""
        xp, p, m = self.xp, self.params, self.model
        if len(self) == 0 or p.egress_per_min <= 0 or int(m.vessels_dev.shape[0]) == 0:
            return
        nb = m.lattice.neighbours(self.data["site"], xp)
        at_vessel = ((nb >= 0) & (m.occupancy[xp.maximum(nb, 0)] == VESSEL)).any(axis=1) & ~self.engaged
        leaving = self.draw(xp.flatnonzero(at_vessel), p.egress_per_min, "egress", "egress")
        if leaving.size == 0:
            return
        leave = index_mask(xp, len(self), leaving)
        reps = m.backend.to_host(m.lattice.replicate_of(self.data["site"][leaving], xp)) \
            if m.replicates > 1 else np.zeros(int(leaving.shape[0]), dtype=np.int64)
        products = m.backend.to_host(self.data["product"][leaving])
        weights = m.backend.to_host(self.data["weight"][leaving])
        for r, p, w in zip(reps.tolist(), products.tolist(), weights.tolist()):
            m.replicas[r].systemic.give(int(p), float(w))
        self.remove(leave, how="left")

    def die(self) -> None:
        """A binomial number of each agent's members die at ``death_per_min`` x the death
        rules; an agent of one cell dies when ``u < p`` (as :meth:`draw` decides), and
        an agent goes with its last member."""
        xp, m = self.xp, self.model
        if len(self) == 0:
            return
        w = self.data["weight"]
        u = self.uniform("death")
        bound = self.rate("death_per_min") * self.rules.max_factor("death") * m.dt_min
        cand = xp.flatnonzero((u < bound * (1.0 + 1e-12)) | (w > 1))
        if cand.size == 0:
            return
        prob = -xp.expm1(-self.rate("death_per_min", cand) * self.factor("death", cand) * m.dt_min)
        dead = crng.binomial(xp, m.seeds, m.steps, self.streams("death"), self.data["id"][cand], w[cand], prob,
                             u=u[cand])
        lost = xp.zeros(len(self), dtype=xp.float64)
        lost[cand] = dead
        coupling.record_lattice(m, "lattice_died", m.weighted_count(self, lost))
        w -= lost
        self.remove(w <= 0, how="died")
