"""TMEModel: the Mesa model that assembles the lattice, the fields, the four populations,
the patient and the therapy timeline, and steps them through the staged schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import mesa
import numpy as np

from ..biology import coupling, therapy
from ..biology.fields import FieldSet
from ..biology.growth import gompertz_rate_per_min, niche_step
from ..biology.host import PER_REPLICATE_RATES
from ..biology.outcomes import History, compute_outcomes
from ..biology.patient import Product, Systemic
from ..biology.perfusion import microvessel_map
from ..biology.populations import CarTCells, Granulocytes, Monocytes, Population, TumorCells
from ..biology.populations.car_t import car_t_rules
from ..biology.rules import RuleSet
from ..config import Config, ConfigError, check_memory, resolve_config, run_work
from ..config.schema import SHARED_BY_BATCH, per_replicate
from ..engine import rng as crng
from ..engine.backend import Array, Backend, make_backend
from ..engine.lattice import VESSEL, Lattice, vessel_sites
from ..engine.schedule import Stage, StagedScheduler
from .readouts import REPORTED, rows

_SETUP = crng.streams(6, "setup", ("vessels", "cells"))
"""The setup draws of a replicate: its vessel layout and its initial cells, each from a
generator of its own seeded by the replicate's seed (a change to one moves no draw of the other)."""


def rare_cells(antigen: np.ndarray, weight: np.ndarray, frequency: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pre-existing antigen-negative cells at the patient's scale: of the initial agents
    (antigen densities ``antigen`` and ``weight`` cells each, (k,)), ``frequency`` x
    the patient's cells (rounded at random to a whole number) are antigen-negative:
    whole agents in a random order, and one more that keeps the remainder (the cells it
    gives up join another agent; a sample of one agent cannot split it, and keeps the
    remainder antigen-positive). Returns (antigen, weight), (k,) each (host)."""
    k = len(antigen)
    w = np.asarray(weight, dtype=float).copy()
    if k == 0 or frequency <= 0:
        return antigen, w
    exact = frequency * w.sum()
    cells = math.floor(exact) + (rng.random() < exact - math.floor(exact))
    order = rng.permutation(k)
    ahead = np.cumsum(w[order]) - w[order]
    whole = order[ahead + w[order] <= cells]  # agents wholly antigen-negative
    antigen = antigen.copy()
    antigen[whole] = 0.0
    rest = cells - w[whole].sum()
    if rest > 0 and len(whole) < k - 1:  # the split agent's other cells join an antigen-positive agent
        split, other = order[len(whole)], order[len(whole) + 1]
        antigen[split] = 0.0
        w[other] += w[split] - rest
        w[split] = rest
    return antigen, w


def initial_weights(n_agents: int, cells: float | None, scale: float) -> np.ndarray:
    """(n,) patient cells of the initial tumor agents: ``scale`` each, or, given the
    disease's ``cells``, those cells shared by the agents as evenly as whole numbers allow."""
    if cells is None:
        return np.full(n_agents, float(scale))
    base, extra = divmod(int(round(cells)), n_agents)
    return base + (np.arange(n_agents) < extra).astype(float)


def _check_room(key: str, wanted: int, free: int) -> None:
    """Refuse to place more initial cells than there are free sites (never fewer, silently)."""
    if wanted > free:
        raise ConfigError(f"{key} {wanted}: only {free} free lattice sites are left for them (after vessels and "
                          f"the cells placed before)")


def replicate_configs(cfg: Config, seeds: Sequence[int],
                      params: Sequence[Mapping[str, Any]] | None) -> list[Config]:
    """One config per replicate: ``cfg`` with the replicate's seed and its ``params``
    (dotted key -> value, keys that may differ per replicate only)."""
    if params is None:
        return [cfg.model_copy(update={"seed": s}) for s in seeds]  # nothing else differs: no validation
    if len(params) != len(seeds):
        raise ValueError(f"params: {len(params)} parameter sets for {len(seeds)} replicates")
    shared = sorted({k for p in params for k in p if not per_replicate(k)})
    if shared:
        raise ValueError(f"params: {', '.join(shared)} cannot differ between the replicates of one batch "
                         f"(patient keys other than {', '.join(SHARED_BY_BATCH)} can, and "
                         f"{', '.join(PER_REPLICATE_RATES)}); run such values in separate models")
    return [resolve_config(cfg, s, dict(p)) for s, p in zip(seeds, params)]


class Replica:
    """One replicate of a model: its seed and its patient (systemic compartment, history,
    therapy event log). A single run is a model with one replica.

    Attributes:
        index: the replicate's position in the batch; seed: its seed; config: its config;
        systemic: its :class:`~tme_abm.biology.patient.Systemic`;
        history: its patient-level :class:`~tme_abm.biology.outcomes.History`;
        event_log: its fired therapy events (host dicts).
    """

    def __init__(self, model: TMEModel, index: int, seed: int, config: Config):
        self.model, self.index, self.seed = model, index, seed
        self.config = config
        """This replicate's config: the model's, with its own seed and its own values of
        the keys that may differ per replicate (:func:`~tme_abm.config.schema.per_replicate`)."""
        self.systemic = Systemic.for_patient(config.patient, seed)
        self.marrow_normal = float(config.tumor.marrow_normal_cells)
        """Normal marrow cells sharing this replicate's niche (:mod:`~tme_abm.biology.growth`)."""
        self.history = History()
        self.event_log: list[dict] = []

    def current_row(self) -> dict[str, float]:
        """This replicate's time-series row now (:meth:`TMEModel.current_rows`)."""
        return self.model.current_rows()[self.index]

    def outcomes(self) -> dict:
        """Outcomes from this replicate's patient-level history (:mod:`tme_abm.biology.outcomes`)."""
        return compute_outcomes(self.history, self.systemic, self.config.patient)


class TMEModel(mesa.Model):
    """The tumor-microenvironment model, one tick per :meth:`step`, for one run or for a
    batch of R replicates of one config stepped in lockstep (``seeds``).

    Each population (tumor, CAR T, monocytes, granulocytes) is one ``mesa.Agent``
    holding its cells as arrays, so ``model.agents`` and ``model.agents_by_type`` list
    populations and ``model.datacollector`` (a ``mesa.DataCollector``) records the
    :data:`~tme_abm.model.readouts.REPORTED` scalars as Mesa's examples do, on the time
    series' schedule: once when the model is built and at the end of every
    ``output.record_every_ticks``-th step and of the last (each row's ``tick`` says which;
    in a batch, each value is a tuple with one entry per replicate). A tick is the staged
    schedule in ``model.scheduler`` (``model.scheduler.describe()`` lists it).

    Replicates share arrays: the lattice, the fields and every population hold all
    replicates, with the replicate as a leading axis that no neighbourhood, diffusion or
    move crosses (docs/architecture.md, "The replicate axis"); each has its own seed and
    patient (``model.replicas``). Replicate r of a batch equals the single run with its
    seed, bit for bit. The replicates may also differ in parameters (``params``: the
    patient's, the disease's growth, the CAR T cells' rates): replicate r then equals the
    single run of the config with its seed and its parameters, bit for bit.

    Args:
        config: a Config, a YAML path or a raw mapping (default: all defaults).
        backend: a Backend; default built from ``config.backend`` and ``config.dtype``.
        seed: overrides ``config.seed``.
        seeds: one seed per replicate: a batch (default: one run with the config's seed).
        params: one mapping of dotted config keys to values per replicate (as many as
            ``seeds``), each replicate's own values of keys that may differ between
            replicates (:func:`~tme_abm.config.schema.per_replicate`; any other key is
            refused with a ValueError): e.g. the points of a design, run as one batch.
        **overrides: dotted config keys, e.g. ``TMEModel("configs/baseline.yaml",
            **{"car_t.initial_cells": 200})`` (this is how ``mesa.batch_run`` varies them).
    """

    def __init__(self, config=None, *, backend: Backend | None = None, seed: int | None = None,
                 seeds=None, params: Sequence[Mapping[str, Any]] | None = None, **overrides):
        cfg = resolve_config(config, seed, overrides)
        self.seeds = (cfg.seed,) if seeds is None else tuple(int(x) for x in seeds)
        """One seed per replicate."""
        if not self.seeds:
            raise ValueError("seeds: a batch needs at least one replicate")
        configs = replicate_configs(cfg, self.seeds, params)
        super().__init__(rng=self.seeds[0])
        self.config = cfg
        self.replicates = n_rep = len(self.seeds)
        self.backend = backend or make_backend(cfg.backend, cfg.dtype, run_work(cfg, n_rep))
        check_memory(cfg, self.backend.free_memory_bytes(),
                     "GPU memory" if self.backend.is_gpu else "host memory", replicates=n_rep)
        xp = self.backend.xp
        self.dt_min = cfg.time.tick_min
        self.n_ticks = cfg.time.n_ticks
        self.time_min = 0.0
        lc = cfg.lattice
        # setup draws (vessels, initial cells) come from generators per replicate, seeded
        # from its seed as a single run of that replicate seeds its own
        n_grid = int(np.prod(lc.shape))
        vessels = [r * n_grid + vessel_sites(lc.shape, lc.vessels.layout, crng.generator(s, _SETUP("vessels")),
                                             lc.vessels.density, lc.vessels.grid_spacing_sites)
                   for r, s in enumerate(self.seeds)]
        self.lattice = Lattice(lc.shape, lc.spacing_um, np.concatenate(vessels), replicates=n_rep)
        self.vessels_dev = xp.asarray(self.lattice.vessel_sites, dtype=xp.int64)
        self.vessel_keys = crng.key_of(self.vessels_dev // n_grid, self.vessels_dev % n_grid, xp)
        """(k,) random-number keys of the vessel sites (replicate and site within it)."""
        pf = lc.perfusion
        lesion = self.lattice.sphere_sites(cfg.tumor_center_sites, cfg.tumor.radius_sites) \
            if cfg.tumor.archetype in ("solid", "bulky") else np.zeros(0, np.int64)
        self.fields = FieldSet(cfg.enabled_fields, self.lattice, self.backend, cfg.field_dt_min,
                               cfg.field_schemes, cfg.time.field_tolerance,
                               microvessel_map(self.lattice, pf.normal_per_mm2, pf.tumor_per_mm2, [lesion] * n_rep),
                               pf.capillary_radius_um)
        self.occupancy = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        self.occupancy[self.vessels_dev] = VESSEL
        self.engaged_map = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        """(n_sites,) int8: 1 where an engaged CAR T sits (the ``contact:car_t_engaged`` signal)."""
        self._owner_cache = None

        prod = cfg.car_t.product
        self.replicas = []
        for r, (s, c) in enumerate(zip(self.seeds, configs)):
            rep = Replica(self, r, s, c)
            # product 0: the cells a config places on the lattice (car_t.initial_cells), none in blood
            rep.systemic.add_product(Product(edits=list(prod.edits), fitness=1.0,
                                             initial_exhaustion=prod.initial_exhaustion, divisions=prod.divisions))
            self.replicas.append(rep)
        products = self.replicas[0].systemic.products
        self.tumor = TumorCells(self, cfg.tumor, RuleSet([cfg.tumor.rules], xp))
        self.car_t = CarTCells(self, cfg.car_t, car_t_rules(cfg.car_t.rules, cfg.edits, products, xp))
        self.monocytes = Monocytes(self, cfg.monocyte, RuleSet([cfg.monocyte.rules], xp))
        self.granulocytes = Granulocytes(self, cfg.granulocyte, RuleSet([cfg.granulocyte.rules], xp))
        self.populations = [self.tumor, self.car_t, self.monocytes, self.granulocytes]
        self._place_initial_cells([crng.generator(s, _SETUP("cells")) for s in self.seeds])

        t, c, mo, g = self.tumor, self.car_t, self.monocytes, self.granulocytes
        self.timeline = therapy.schedule(cfg)
        self.next_event = 0
        """Index into ``timeline`` of the next firing."""
        self.scheduler = StagedScheduler(self, [
            Stage("therapy", [("therapy.events", self.apply_events)]),
            Stage("fields", [("fields.solve", self.solve_fields)]),
            Stage("sensing", [(f"{p.kind}.sense", p.sense) for p in self.populations]),
            Stage("engagement", [("car_t.finish_engagements", c.finish_engagements), ("car_t.rest", c.rest),
                                 ("car_t.engage", c.engage), ("monocyte.activate", mo.activate)]),
            Stage("movement", [("car_t.move", c.move), ("monocyte.move", mo.move),
                               ("granulocyte.move", g.move)], shuffle=True),
            Stage("division_recruitment", [("tumor.divide", t.divide), ("car_t.divide", c.divide),
                                           ("car_t.arrive", c.arrive), ("monocyte.recruit", mo.recruit),
                                           ("granulocyte.recruit", g.recruit)], shuffle=True),
            Stage("death_clearance", [("tumor.die", t.die), ("tumor.clear", t.clear), ("car_t.die", c.die),
                                      ("car_t.egress", c.egress),
                                      ("monocyte.die", mo.die), ("granulocyte.die", g.die)]),
            Stage("systemic", [("systemic.advance", self.advance_systemic)]),
            Stage("secretion", [("fields.sources", self.collect_sources)]),
        ])
        for rep, b in zip(self.replicas, self.burden()):
            rep.systemic.start(float(b))
        self._remember()
        self.collect_sources()
        for p in self.populations:
            p.reset_events()
        self._rows: tuple[int, list[dict]] | None = None  # (tick, rows) of current_rows()
        self.datacollector = mesa.DataCollector(
            model_reporters={k: (lambda m, k=k: m.reported(k)) for k in REPORTED}
        )
        self.datacollector.collect(self)

    # ---- one run ---------------------------------------------------------------------

    def _only(self) -> Replica:
        if self.replicates != 1:
            raise AttributeError(f"a batch of {self.replicates} replicates has one patient per replicate: "
                                 f"use model.replicas[r]")
        return self.replicas[0]

    @property
    def seed(self) -> int:
        """The seed of a single run (a batch: ``model.seeds``)."""
        return self._only().seed

    @property
    def systemic(self) -> Systemic:
        """The patient of a single run (a batch: ``model.replicas[r].systemic``)."""
        return self._only().systemic

    @property
    def history(self) -> History:
        """The patient-level history of a single run."""
        return self._only().history

    @property
    def event_log(self) -> list[dict]:
        """The therapy events fired in a single run."""
        return self._only().event_log

    def current_row(self) -> dict[str, float]:
        """The time-series row of a single run now (a batch: :meth:`current_rows`)."""
        return self._only().current_row()

    def outcomes(self) -> dict:
        """The outcomes of a single run (a batch: ``model.replicas[r].outcomes()``)."""
        return self._only().outcomes()

    # ---- setup -----------------------------------------------------------------------

    def _place_initial_cells(self, setup: list[np.random.Generator]) -> None:
        """Place each replicate's initial cells with its own setup generator."""
        cfg = self.config
        t = cfg.tumor
        lat = self.lattice
        occ = self.backend.to_host(self.occupancy).reshape(self.replicates, lat.n_grid)
        tumor_sites, antigen, lineage, weight = [], [], [], []
        for r, rng in enumerate(setup):
            sites = np.zeros(0, dtype=np.int64)
            if t.archetype in ("solid", "bulky"):
                sites = lat.sphere_sites(cfg.tumor_center_sites, t.radius_sites)
                sites = sites[occ[r, sites] == 0]
            if t.archetype in ("dispersed", "bulky"):
                free = np.setdiff1d(np.flatnonzero(occ[r] == 0), sites)
                n = cfg.dispersed_agents
                _check_room("tumor.initial_cells", n, len(free))
                extra = rng.choice(free, size=n, replace=False)
                sites = np.sort(np.concatenate([sites, extra]))
            tumor_sites.append(r * lat.n_grid + sites)
            cells = t.burden_cells if t.archetype == "dispersed" else None
            a, w = rare_cells(self.tumor.initial_antigen(len(sites), rng),
                              initial_weights(len(sites), cells, coupling.scale(self)), t.antigen.negative_fraction,
                              rng)
            antigen.append(a)
            weight.append(w)
            lineage.append(self.tumor.next_id[r] + np.arange(len(sites)))
        self.tumor.seed_cells(np.concatenate(tumor_sites), np.concatenate(antigen), np.concatenate(lineage),
                              np.concatenate(weight))
        tc = [rep.config.tumor for rep in self.replicas]
        self.capacity = np.array([float(c.carrying_capacity_cells) if c.carrying_capacity_cells is not None else
                                  c.capacity_fold * (len(s) + c.marrow_normal_cells) or np.inf
                                  for c, s in zip(tc, tumor_sites)])
        """(R,) carrying capacity of each replicate's niche, in cells of the lattice's weight
        (host): the config's, or ``tumor.capacity_fold`` x the initial tumor and normal
        marrow cells (a disease that grows towards a ceiling well above it); infinite
        (space alone limits growth) when a lattice starts with neither."""
        self.capacity_dev = self.backend.xp.asarray(self.capacity)
        self.gompertz = np.array([gompertz_rate_per_min(c) for c in tc])
        """(R,) the Gompertz rate alpha of each replicate's disease (1/min, host;
        :func:`~tme_abm.biology.growth.gompertz_rate_per_min`)."""
        self.gompertz_dev = self.backend.xp.asarray(self.gompertz)
        for pop, n in ((self.car_t, cfg.car_t.initial_cells), (self.monocytes, cfg.monocyte.initial_cells),
                       (self.granulocytes, cfg.granulocyte.initial_cells)):
            if n:
                occ = self.backend.to_host(self.occupancy).reshape(self.replicates, lat.n_grid)
                sites = []
                for r, rng in enumerate(setup):
                    free = np.flatnonzero(occ[r] == 0)
                    _check_room(f"{pop.kind}.initial_cells", n, len(free))
                    sites.append(r * lat.n_grid + np.sort(rng.choice(free, size=n, replace=False)))
                sites = np.concatenate(sites)
                extra = pop.new_cell_state(sites) if pop is self.car_t else {}
                pop.add(sites, how="arrived", **extra)
                if pop is self.car_t:  # from outside the patient's blood
                    coupling.record(self, "placed", np.full(self.replicates, n * coupling.scale(self)))

    # ---- the patient ------------------------------------------------------------------

    @property
    def day(self) -> float:
        """Current day relative to the (first) infusion."""
        return self.config.start_day + self.time_min / 1440.0

    def count(self, pop: Population, mask: Array | None = None, weights: Array | None = None) -> Array:
        """(R,) int64 device array: cells of ``pop`` per replicate, those where ``mask``
        ((n,) bool) is true, or the sum of ``weights`` ((n,) ints) over the cells. Read
        on the host together with others (one copy), as the callers here do."""
        xp = self.backend.xp
        w = mask if weights is None else weights
        if self.replicates == 1:
            return xp.full(1, len(pop), dtype=xp.int64) if w is None else w.sum(keepdims=True).astype(xp.int64)
        rep = self.lattice.replicate_of(pop.data["site"], xp)
        return xp.bincount(rep, weights=w, minlength=self.replicates).astype(xp.int64)

    def weighted_count(self, pop: Population, weights: Array) -> Array:
        """(R,) float64 device array: the sum of ``weights`` ((n,) floats, e.g. tumor
        weights: patient cells) over the cells of ``pop`` per replicate."""
        xp = self.backend.xp
        if self.replicates == 1:
            return weights.sum(keepdims=True).astype(xp.float64)
        rep = self.lattice.replicate_of(pop.data["site"], xp)
        return xp.bincount(rep, weights=weights, minlength=self.replicates).astype(xp.float64)

    def host_counts(self, *counts) -> np.ndarray:
        """(len(counts), R) host array of device count arrays, in one copy."""
        xp = self.backend.xp
        return self.backend.to_host(xp.stack([xp.asarray(c) for c in counts]))

    def _patient_counts(self) -> np.ndarray:
        """(6, R) host float64 per replicate (one copy), in patient cells (sums of
        weights): the disease's alive tumor cells, its engaged CAR T, all its CAR T, the
        tumor cells killed by CAR T this tick, the antigen-negative alive tumor cells and
        the engaged CAR T with divisions left (:func:`~tme_abm.biology.coupling.lesion`)."""
        t, c = self.tumor, self.car_t
        xp = self.backend.xp
        engaged, w = c.engaged, c.data["weight"]
        return self.host_counts(self.weighted_count(t, t.alive_weight()),
                                self.weighted_count(c, xp.where(engaged, w, 0.0)), self.weighted_count(c, w),
                                xp.asarray(c.killed_now(), dtype=xp.float64),
                                self.weighted_count(t, xp.where(t.antigen_negative(), t.data["weight"], 0.0)),
                                self.weighted_count(c, xp.where(engaged & (c.data["divisions_left"] > 0), w, 0.0)))

    def burden(self) -> np.ndarray:
        """(R,) tumor cells of each replicate's disease (the weights of the lattice's alive
        tumor agents; the patient adds circulating tumor cells)."""
        return coupling.burden(self)

    def marrow_normal(self) -> np.ndarray:
        """(R,) normal marrow cells of each replicate's niche (host)."""
        return np.array([rep.marrow_normal for rep in self.replicas])

    def myeloid_per_tumor(self) -> np.ndarray:
        """(R,) lattice myeloid cells per alive tumor cell."""
        mono, gran, alive = self.host_counts(self.count(self.monocytes), self.count(self.granulocytes),
                                             self.count(self.tumor, self.tumor.alive))
        return (mono + gran) / np.maximum(alive, 1)

    def update_products(self) -> None:
        """Recompile the CAR T rules after a product was added (its edits; every replicate
        infuses the same products)."""
        self.car_t.rules = car_t_rules(self.config.car_t.rules, self.config.edits,
                                      self.replicas[0].systemic.products, self.backend.xp)

    def apply_events(self) -> None:
        """Fire the therapy events whose time falls in this tick (each replicate logs its own)."""
        t0 = self.time_min - self.dt_min
        while self.next_event < len(self.timeline) and self.timeline[self.next_event].minute < self.time_min:
            item = self.timeline[self.next_event]
            if item.minute >= t0 - 1e-9:
                for rep, entry in zip(self.replicas, therapy.apply(self, item)):
                    rep.event_log.append(entry)
            self.next_event += 1

    def advance_systemic(self) -> None:
        """Advance each replicate's patient over this tick with its lattice's inputs
        (scaled to the patient; :class:`~tme_abm.biology.patient.Lesion`)."""
        counts = self._patient_counts()
        t = self.config.tumor
        s = coupling.scale(self)
        for r, rep in enumerate(self.replicas):
            lesion = coupling.lesion(self, counts, r)
            rep.systemic.advance(self.time_min - self.dt_min, self.dt_min, lesion)
            rep.marrow_normal = niche_step(rep.marrow_normal, lesion.burden / s, self.capacity[r],
                                           float(self.gompertz[r]), t.apoptosis_per_min, t.divide_per_min, self.dt_min)
        self._remember(counts)

    def _remember(self, counts: np.ndarray | None = None) -> None:
        """Append each replicate's patient-level state of this tick to its ``history``
        (``counts``: :meth:`_patient_counts` of this tick, if read already)."""
        counts = self._patient_counts() if counts is None else counts
        alive, car_t, neg = counts[0], counts[2], counts[4]
        for r, rep in enumerate(self.replicas):
            s = rep.systemic
            a = float(alive[r])
            rep.history.append(day=self.day, burden=s.burden, tumor_alive=a, circulating_tumor=s.circulating_tumor,
                               blood_car_t=s.blood_total, disease_car_t=float(car_t[r]), cytokine=s.cytokine,
                               crs_grade=s.crs_grade(), antigen_negative_fraction=float(neg[r]) / a if a else 0.0)

    # ---- helpers used by the populations ---------------------------------------------

    def site_owner(self, pop: Population) -> Array:
        """(n_sites,) index into ``pop`` of the cell at each site, -1 elsewhere (cached
        until the population changes)."""
        xp = self.backend.xp
        key = (pop.kind, pop._version)
        if self._owner_cache is None or self._owner_cache[0] != key:
            owner = xp.full(self.lattice.n_sites, -1, dtype=xp.int64)
            owner[pop.data["site"]] = xp.arange(len(pop), dtype=xp.int64)
            self._owner_cache = (key, owner)
        return self._owner_cache[1]

    def sense_signal(self, name: str, sites, cache: dict | None = None):
        """(k,) values of signal ``name`` at ``sites`` ((k,) flat): a field's value, or
        ``contact:<type>``, the number of Moore neighbours of that type. ``cache`` keeps
        the neighbour codes between calls for the same sites."""
        xp = self.backend.xp
        if not name.startswith("contact:"):
            return self.fields.at(name, sites)
        cache = {} if cache is None else cache
        nb = cache.get("_nb")
        if nb is None:
            nb = cache["_nb"] = self.lattice.neighbours(sites, xp)
        kind = name[8:]
        if kind == "car_t_engaged":
            return xp.where(nb >= 0, self.engaged_map[xp.maximum(nb, 0)], 0).sum(axis=1)
        codes = cache.get("_codes")
        if codes is None:
            codes = cache["_codes"] = xp.where(nb >= 0, self.occupancy[xp.maximum(nb, 0)], 0)
        code = next(p.code for p in self.populations if p.kind == kind)
        return (codes == code).sum(axis=1)

    # ---- stages owned by the model ---------------------------------------------------

    def solve_fields(self) -> None:
        """Solve all fields with the sources of the last secretion stage: over this tick,
        or, with ``time.fields_every_ticks = k``, over the next k ticks at every k-th tick."""
        t = self.config.time
        if (self.steps - 1) % t.fields_every_ticks == 0:
            self.fields.step(self.sources, t.field_substeps)
        self.mark_engaged()

    def mark_engaged(self) -> None:
        """Rebuild :attr:`engaged_map` from the CAR T cells now engaged."""
        self.engaged_map[...] = 0
        self.engaged_map[self.car_t.data["site"][self.car_t.engaged]] = 1

    def collect_sources(self) -> None:
        """The secretion stage: every cell's secretion and uptake for the next field solve,
        collected only at the end of a tick whose next tick solves the fields (with
        ``time.fields_every_ticks = k``, every k-th tick: the others' would never be used)."""
        if self.steps % self.config.time.fields_every_ticks == 0:
            self.sources = self.fields.sources(self.populations)

    def step(self) -> None:
        """Advance one tick (``config.time.tick_min`` minutes) through the staged schedule,
        then record the new state in the DataCollector."""
        for p in self.populations:
            p.reset_events()
        self.time_min += self.dt_min
        self.scheduler.step()
        if self.steps >= self.n_ticks:
            self.running = False
        if self.recorded():
            self.datacollector.collect(self)

    def recorded(self) -> bool:
        """Whether this tick's state is a time-series row: every ``output.record_every_ticks``
        ticks and the last (its rows, the medians among them, are computed only then)."""
        return self.steps % self.config.output.record_every_ticks == 0 or not self.running

    def current_rows(self) -> list[dict[str, float]]:
        """The current state as host scalars, one time-series row per replicate
        (:func:`~.readouts.rows`), computed once per tick."""
        if self._rows is None or self._rows[0] != self.steps:
            self._rows = (self.steps, rows(self))
        return self._rows[1]

    def reported(self, key: str):
        """A DataCollector value: the row's ``key`` (NaN if absent); in a batch, a tuple
        with one value per replicate."""
        values = tuple(r.get(key, float("nan")) for r in self.current_rows())
        return values[0] if self.replicates == 1 else values
