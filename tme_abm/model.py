"""TMEModel: the Mesa model that owns the lattice, the fields and the four populations."""

from __future__ import annotations

import mesa
import numpy as np

from .biology import therapy
from .biology.fields import FieldSet
from .biology.outcomes import compute_outcomes
from .biology.patient import Product, Systemic
from .biology.populations import CarTCells, Granulocytes, Monocytes, TumorCells
from .biology.populations.car_t import car_t_rules
from .biology.rules import RuleSet
from .engine.backend import Backend, make_backend
from .config import check_memory, resolve_config
from .engine.diffusion import Sources
from .engine.lattice import Lattice, vessel_sites
from .engine.schedule import Stage, StagedScheduler

VESSEL = -1  # occupancy code of vessel sites (no cell can sit there)

REPORTED = (
    "tumor_alive", "tumor_necrotic", "tumor_apoptotic", "tumor_killed", "tumor_antigen_negative",
    "tumor_antigen_low", "tumor_antigen_high", "car_t_effector", "car_t_exhausted", "car_t_engaged",
    "car_t_kills", "monocytes", "monocytes_activated", "granulocytes", "hypoxic_fraction", "ph_mean",
    "adenosine_mean", "car_t_tumor_ratio", "burden", "blood_car_t", "systemic_cytokine", "crs_grade",
)
"""Model reporters of the DataCollector (host scalars; one column each)."""


class TMEModel(mesa.Model):
    """The tumor-microenvironment model, one tick per :meth:`step`.

    Each population (tumor, CAR T, monocytes, granulocytes) is one ``mesa.Agent``
    holding its cells as arrays, so ``model.agents`` and ``model.agents_by_type`` list
    populations and ``model.datacollector`` (a ``mesa.DataCollector``) records the
    :data:`REPORTED` scalars every tick. A tick is the staged schedule in
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
        self.fields = FieldSet(cfg.enabled_fields, self.lattice, self.backend, cfg.field_dt_min)
        self.occupancy = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        self.occupancy[self.vessels_dev] = VESSEL
        self._engaged_map = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
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
        self._timeline = therapy.schedule(cfg)
        self._next_event = 0
        self.event_log: list[dict] = []
        self.history: dict[str, list[float]] = {k: [] for k in (
            "day", "burden", "tumor_alive", "blood_car_t", "cytokine", "crs_grade", "antigen_negative_fraction")}
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
        self._row: dict | None = None
        self.datacollector = mesa.DataCollector(
            model_reporters={k: (lambda m, k=k: m.current_row().get(k, float("nan"))) for k in REPORTED}
        )

    # ---- setup -----------------------------------------------------------------------

    def _free_sites_host(self) -> np.ndarray:
        return np.flatnonzero(self.backend.to_host(self.occupancy) == 0)

    def _place_initial_cells(self) -> None:
        cfg = self.config
        t = cfg.tumor
        sites = np.zeros(0, dtype=np.int64)
        occ = self.backend.to_host(self.occupancy)
        if t.archetype in ("solid", "bulky"):
            center = [(s - 1) / 2.0 for s in self.lattice.shape]
            sites = self.lattice.sphere_sites(center, t.radius_sites)
            sites = sites[occ[sites] == 0]
        if t.archetype in ("dispersed", "bulky"):
            free = np.setdiff1d(np.flatnonzero(occ == 0), sites)
            extra = self.rng.choice(free, size=min(t.initial_cells, len(free)), replace=False)
            sites = np.sort(np.concatenate([sites, extra]))
        self.tumor.seed_cells(sites, self.rng)
        for pop, n in ((self.car_t, cfg.car_t.initial_cells), (self.monocytes, cfg.monocyte.initial_cells),
                       (self.granulocytes, cfg.granulocyte.initial_cells)):
            if n:
                free = self._free_sites_host()
                sites = np.sort(self.rng.choice(free, size=min(n, len(free)), replace=False))
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
        while self._next_event < len(self._timeline) and self._timeline[self._next_event].minute < self.time_min:
            item = self._timeline[self._next_event]
            if item.minute >= t0 - 1e-9:
                self.event_log.append(therapy.apply(self, item))
            self._next_event += 1

    def advance_systemic(self) -> None:
        s = self.systemic
        scale = self.config.patient.burden_scale
        s.burden = self.burden()
        engaged = float(int(self.car_t.engaged.sum())) * scale
        activated = float(int(self.monocytes.data["activated"].sum())) * scale
        s.advance(self.time_min - self.dt_min, self.dt_min, engaged, activated)
        self._remember()

    def _remember(self) -> None:
        """Append the patient-level state of this tick to ``history`` (host floats)."""
        s = self.systemic
        h = self.history
        alive = int((self.tumor.data["state"] == 0).sum())
        neg = int(((self.tumor.data["state"] == 0) & (self.tumor.data["antigen"] < 0.05)).sum())
        h["day"].append(self.day)
        h["burden"].append(s.burden)
        h["tumor_alive"].append(float(alive))
        h["blood_car_t"].append(s.blood_total)
        h["cytokine"].append(s.cytokine)
        h["crs_grade"].append(float(s.crs_grade()))
        h["antigen_negative_fraction"].append(neg / alive if alive else 0.0)

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
            return xp.where(nb >= 0, self._engaged_map[xp.maximum(nb, 0)], 0).sum(axis=1)
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
            self.fields.step(self._sources, t.field_substeps)
        self._engaged_map[...] = 0
        self._engaged_map[self.car_t.data["site"][self.car_t.engaged]] = 1

    def collect_sources(self) -> None:
        self._sources = self.fields.sources(self.populations)

    def step(self) -> None:
        """Advance one tick (``config.time.tick_min`` minutes) through the staged schedule.

        As in Mesa's examples, the DataCollector records the state at the start of each
        step, so its row k is the state after k ticks (``mesa.batch_run`` relies on it).
        """
        self.datacollector.collect(self)
        for p in self.populations:
            p.reset_events()
        self.time_min += self.dt_min
        self._row = None
        self.scheduler.step()
        if self.steps >= self.n_ticks:
            self.running = False

    def cell_table(self) -> dict[str, np.ndarray]:
        """Every cell now, as host columns of equal length: ``x``, ``y`` (``z`` in 3D) lattice
        indices (int32), ``type`` (int8 occupancy code: 1 tumor, 2 CAR T, 3 monocyte,
        4 granulocyte), ``id`` (int64, unique within a type), and the columns of
        :meth:`Population.snapshot` (state, lineage, antigen, exhaustion)."""
        to_host = self.backend.to_host
        parts = []
        for p in self.populations:
            cols = {k: to_host(v) for k, v in p.snapshot().items()}
            site = to_host(p.data["site"])
            for axis, c in zip("xyz", np.unravel_index(site, self.lattice.shape)):
                cols[axis] = c.astype(np.int32)
            cols["type"] = np.full(site.shape, p.code, dtype=np.int8)
            cols["id"] = to_host(p.data["id"])
            parts.append(cols)
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    # ---- checkpoints -------------------------------------------------------------------

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The complete dynamic state between two ticks: ``(arrays, meta)``.

        ``arrays`` maps "group/name" to host arrays (cell columns per population, the
        field solver's buffer, the sources for the next field solve, the history and the
        DataCollector's rows); ``meta`` holds JSON-able scalars (tick, time, systemic
        compartment, event log, Mesa's generator). Everything else (lattice, vessels,
        rules, timeline) is rebuilt from the config, so ``TMEModel(config)`` followed by
        :meth:`set_state` continues exactly as the model that was saved. The random
        numbers are counter-based (seed, tick, stream, cell id): their state is the tick.
        """
        to_host = self.backend.to_host
        arrays: dict[str, np.ndarray] = {}
        meta: dict = {"steps": int(self.steps), "time_min": self.time_min, "running": bool(self.running),
                      "next_event": self._next_event, "event_log": self.event_log,
                      "systemic": self.systemic.get_state(), "populations": {},
                      "rng": self.rng.bit_generator.state}
        for p in self.populations:
            cols, pmeta = p.get_state()
            arrays.update({f"{p.kind}/{k}": v for k, v in cols.items()})
            meta["populations"][p.kind] = pmeta
        arrays["fields/buffer"], meta["fields_lead"] = self.fields.solver.get_state()
        src = self._sources
        arrays.update({f"sources/{k}": np.array(to_host(getattr(src, k)), copy=True)
                       for k in ("sites", "secretion", "uptake")})
        arrays.update({f"history/{k}": np.asarray(v, dtype=np.float64) for k, v in self.history.items()})
        cols = list(self.datacollector.model_vars)
        meta["datacollector_columns"] = cols
        arrays["datacollector/rows"] = np.array([self.datacollector.model_vars[k] for k in cols],
                                                dtype=np.float64).T.reshape(-1, len(cols))
        return arrays, meta

    def set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restore a state from :meth:`get_state` into a model built from the same config."""
        xp = self.backend.xp
        self.steps = int(meta["steps"])
        self.time_min = float(meta["time_min"])
        self.running = bool(meta["running"])
        self._next_event = int(meta["next_event"])
        self.event_log = list(meta["event_log"])
        self.rng.bit_generator.state = meta["rng"]
        self.systemic.set_state(meta["systemic"])
        self.update_products()
        self.occupancy[...] = 0
        self.occupancy[self.vessels_dev] = VESSEL
        for p in self.populations:
            prefix = f"{p.kind}/"
            p.set_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                        meta["populations"][p.kind])
            self.occupancy[p.data["site"]] = p.code
        self._owner_cache = None
        self._engaged_map[...] = 0
        self._engaged_map[self.car_t.data["site"][self.car_t.engaged]] = 1
        self.fields.solver.set_state(arrays["fields/buffer"], meta["fields_lead"])
        self._sources = Sources(xp.asarray(arrays["sources/sites"]),
                                xp.asarray(arrays["sources/secretion"], dtype=self.backend.dtype),
                                xp.asarray(arrays["sources/uptake"], dtype=self.backend.dtype))
        self.history = {k: [float(x) for x in arrays[f"history/{k}"]] for k in self.history}
        rows = arrays["datacollector/rows"]
        self.datacollector.model_vars = {k: [float(x) for x in rows[:, j]]
                                         for j, k in enumerate(meta["datacollector_columns"])}
        self._row = None

    # ---- reporting -------------------------------------------------------------------

    def current_row(self) -> dict[str, float]:
        """Host scalars describing the current state (one time-series row), computed once
        per state (:meth:`step` forgets it)."""
        if self._row is None:
            self._row = self.record()
        return self._row

    def _derived_field_summaries(self) -> dict[str, float]:
        """Mean pH from the proton field (pH = 6 - log10(H+ in uM)) and the fraction of
        voxels below ``output.hypoxic_threshold_mmHg`` of oxygen."""
        f = self.fields
        xp = self.backend.xp
        v = f.values.reshape(len(f.names), -1)
        out = {}
        if "protons" in f.index:
            h = xp.maximum(v[f.index["protons"]].astype(xp.float64), 1e-12)
            out["ph_mean"] = float(self.backend.to_host((6.0 - xp.log10(h)).mean()))
        out["hypoxic_fraction"] = float(self.backend.to_host(
            (v[f.index["oxygen"]] < self.config.output.hypoxic_threshold_mmHg).mean()))
        return out

    def record(self) -> dict[str, float]:
        row = {"tick": float(self.steps), "time_min": self.time_min}
        for p in self.populations:
            row.update({k: float(v) for k, v in p.counts().items()})
        row.update(self.fields.summaries())
        row.update(self._derived_field_summaries())
        s = self.systemic
        row.update({"day": self.day, "burden": s.burden, "blood_car_t": s.blood_total,
                    "systemic_cytokine": s.cytokine, "crs_grade": float(s.crs_grade())})
        alive = row["tumor_alive"]
        cart = row["car_t_effector"] + row["car_t_exhausted"]
        row["car_t_tumor_ratio"] = cart / alive if alive > 0 else float("inf") if cart > 0 else 0.0
        return row
