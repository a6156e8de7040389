"""TMEModel: the Mesa model that assembles the lattice, the fields, the four populations,
the patient and the therapy timeline, and steps them through the staged schedule."""

from __future__ import annotations

import mesa
import numpy as np

from ..biology import therapy
from ..biology.fields import FieldSet
from ..biology.outcomes import History, compute_outcomes
from ..biology.patient import Product, Systemic
from ..biology.populations import CarTCells, Granulocytes, Monocytes, TumorCells
from ..biology.populations.car_t import car_t_rules
from ..biology.rules import RuleSet
from ..config import ConfigError, check_memory, resolve_config
from ..engine.backend import Backend, make_backend
from ..engine.lattice import Lattice, vessel_sites
from ..engine.schedule import Stage, StagedScheduler
from .readouts import REPORTED, row

VESSEL = -1  # occupancy code of vessel sites (no cell can sit there)


def _check_room(key: str, wanted: int, free: int) -> None:
    """Refuse to place more initial cells than there are free sites (never fewer, silently)."""
    if wanted > free:
        raise ConfigError(f"{key} {wanted}: only {free} free lattice sites are left for them (after vessels and "
                          f"the cells placed before)")


class TMEModel(mesa.Model):
    """The tumor-microenvironment model, one tick per :meth:`step`.

    Each population (tumor, CAR T, monocytes, granulocytes) is one ``mesa.Agent``
    holding its cells as arrays, so ``model.agents`` and ``model.agents_by_type`` list
    populations and ``model.datacollector`` (a ``mesa.DataCollector``) records the
    :data:`~tme_abm.model.readouts.REPORTED` scalars as Mesa's examples do: once when the
    model is built and at the end of every step, so its row k is the state after k ticks
    and the last row is the final state. A tick is the staged schedule in
    ``model.scheduler`` (``model.scheduler.describe()`` lists it).

    Args:
        config: a Config, a YAML path or a raw mapping (default: all defaults).
        backend: a Backend; default built from ``config.backend`` and ``config.dtype``.
        seed: overrides ``config.seed``.
        **overrides: dotted config keys, e.g. ``TMEModel("configs/baseline.yaml",
            **{"car_t.initial_cells": 200})`` (this is how ``mesa.batch_run`` varies them).
    """

    VESSEL = VESSEL

    def __init__(self, config=None, *, backend: Backend | None = None, seed: int | None = None, **overrides):
        cfg = resolve_config(config, seed, overrides)
        super().__init__(rng=cfg.seed)
        self.config = cfg
        self.seed = cfg.seed
        self.backend = backend or make_backend(cfg.backend, cfg.dtype)
        check_memory(cfg, self.backend.free_memory_bytes(),
                     "GPU memory" if self.backend.is_gpu else "host memory")
        xp = self.backend.xp
        self.dt_min = cfg.time.tick_min
        self.n_ticks = cfg.time.n_ticks
        self.time_min = 0.0
        lc = cfg.lattice
        self.lattice = Lattice(lc.shape, lc.spacing_um, vessel_sites(
            lc.shape, lc.vessels.layout, self.rng, lc.vessels.density, lc.vessels.grid_spacing_sites))
        self.vessels_dev = xp.asarray(self.lattice.vessel_sites, dtype=xp.int64)
        self.fields = FieldSet(cfg.enabled_fields, self.lattice, self.backend, cfg.field_dt_min,
                               cfg.field_schemes, cfg.time.field_tolerance)
        self.occupancy = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        self.occupancy[self.vessels_dev] = VESSEL
        self.engaged_map = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        """(n_sites,) int8: 1 where an engaged CAR T sits (the ``contact:car_t_engaged`` signal)."""
        self._owner_cache = None

        prod = cfg.car_t.product
        self.systemic = Systemic(cfg.patient, blood=[0.0], products=[
            Product(edits=list(prod.edits), fitness=1.0, initial_exhaustion=prod.initial_exhaustion,
                    divisions=prod.divisions)])
        self.tumor = TumorCells(self, cfg.tumor, RuleSet([cfg.tumor.rules], xp))
        self.car_t = CarTCells(self, cfg.car_t, car_t_rules(cfg.car_t.rules, cfg.edits, self.systemic.products, xp))
        self.monocytes = Monocytes(self, cfg.monocyte, RuleSet([cfg.monocyte.rules], xp))
        self.granulocytes = Granulocytes(self, cfg.granulocyte, RuleSet([cfg.granulocyte.rules], xp))
        self.populations = [self.tumor, self.car_t, self.monocytes, self.granulocytes]
        self._place_initial_cells()

        t, c, mo, g = self.tumor, self.car_t, self.monocytes, self.granulocytes
        self.timeline = therapy.schedule(cfg)
        self.next_event = 0
        """Index into ``timeline`` of the next firing."""
        self.event_log: list[dict] = []
        self.history = History()
        self.scheduler = StagedScheduler(self, [
            Stage("therapy", [("therapy.events", self.apply_events)]),
            Stage("fields", [("fields.solve", self.solve_fields)]),
            Stage("sensing", [(f"{p.kind}.sense", p.sense) for p in self.populations]),
            Stage("engagement", [("car_t.finish_engagements", c.finish_engagements),
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
        self.systemic.burden = self.burden()
        self._remember()
        self.collect_sources()
        for p in self.populations:
            p.reset_events()
        self._row: tuple[int, dict] | None = None  # (tick, row) of current_row()
        self.datacollector = mesa.DataCollector(
            model_reporters={k: (lambda m, k=k: m.current_row().get(k, float("nan"))) for k in REPORTED}
        )
        self.datacollector.collect(self)

    # ---- setup -----------------------------------------------------------------------

    def _free_sites_host(self) -> np.ndarray:
        return np.flatnonzero(self.backend.to_host(self.occupancy) == 0)

    def _place_initial_cells(self) -> None:
        cfg = self.config
        t = cfg.tumor
        sites = np.zeros(0, dtype=np.int64)
        occ = self.backend.to_host(self.occupancy)
        if t.archetype in ("solid", "bulky"):
            sites = self.lattice.sphere_sites(cfg.tumor_center_sites, t.radius_sites)
            sites = sites[occ[sites] == 0]
        if t.archetype in ("dispersed", "bulky"):
            free = np.setdiff1d(np.flatnonzero(occ == 0), sites)
            _check_room("tumor.initial_cells", t.initial_cells, len(free))
            extra = self.rng.choice(free, size=t.initial_cells, replace=False)
            sites = np.sort(np.concatenate([sites, extra]))
        self.tumor.seed_cells(sites, self.rng)
        for pop, n in ((self.car_t, cfg.car_t.initial_cells), (self.monocytes, cfg.monocyte.initial_cells),
                       (self.granulocytes, cfg.granulocyte.initial_cells)):
            if n:
                free = self._free_sites_host()
                _check_room(f"{pop.kind}.initial_cells", n, len(free))
                sites = np.sort(self.rng.choice(free, size=n, replace=False))
                extra = pop.new_cell_state(len(sites)) if pop is self.car_t else {}
                pop.add(sites, how="arrived", **extra)

    # ---- the patient ------------------------------------------------------------------

    @property
    def day(self) -> float:
        """Current day relative to the (first) infusion."""
        return self.config.start_day + self.time_min / 1440.0

    def burden(self) -> float:
        """Total tumor burden of the patient: alive lattice tumor cells x burden_scale."""
        return float(int((self.tumor.data["state"] == 0).sum())) * self.config.patient.burden_scale

    def myeloid_per_tumor(self) -> float:
        alive = int((self.tumor.data["state"] == 0).sum())
        return (len(self.monocytes) + len(self.granulocytes)) / max(alive, 1)

    def update_products(self) -> None:
        """Recompile the CAR T rules after a product was added (its edits)."""
        self.car_t.rules = car_t_rules(self.config.car_t.rules, self.config.edits, self.systemic.products,
                                      self.backend.xp)

    def apply_events(self) -> None:
        """Fire the therapy events whose time falls in this tick."""
        t0 = self.time_min - self.dt_min
        while self.next_event < len(self.timeline) and self.timeline[self.next_event].minute < self.time_min:
            item = self.timeline[self.next_event]
            if item.minute >= t0 - 1e-9:
                self.event_log.append(therapy.apply(self, item))
            self.next_event += 1

    def advance_systemic(self) -> None:
        s = self.systemic
        scale = self.config.patient.burden_scale
        s.burden = self.burden()
        engaged = float(int(self.car_t.engaged.sum())) * scale
        activated = float(int(self.monocytes.data["activated"].sum())) * scale
        s.advance(self.time_min - self.dt_min, self.dt_min, engaged, activated)
        self._remember()

    def _remember(self) -> None:
        """Append the patient-level state of this tick to ``history``."""
        s = self.systemic
        alive = int((self.tumor.data["state"] == 0).sum())
        neg = int(((self.tumor.data["state"] == 0) & (self.tumor.data["antigen"] < 0.05)).sum())
        self.history.append(day=self.day, burden=s.burden, tumor_alive=alive, blood_car_t=s.blood_total,
                            cytokine=s.cytokine, crs_grade=s.crs_grade(),
                            antigen_negative_fraction=neg / alive if alive else 0.0)

    def outcomes(self) -> dict:
        """Per-run outcomes from the patient-level history (see :mod:`tme_abm.biology.outcomes`)."""
        return compute_outcomes(self.history, self.systemic, self.config.patient)

    # ---- helpers used by the populations ---------------------------------------------

    def site_owner(self, pop):
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
        """The secretion stage: every cell's secretion and uptake for the next field solve."""
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
        self.datacollector.collect(self)

    def current_row(self) -> dict[str, float]:
        """The current state as host scalars (one time-series row, :func:`~.readouts.row`),
        computed once per tick."""
        if self._row is None or self._row[0] != self.steps:
            self._row = (self.steps, row(self))
        return self._row[1]
