"""TMEModel: the Mesa model that owns the lattice, the fields and the populations."""

from __future__ import annotations

import mesa
import numpy as np

from .agents import TumorCells
from .backend import Backend, make_backend
from .config import Config, check_memory
from .fields import FieldSet
from .lattice import Lattice

VESSEL = -1  # occupancy code of vessel sites (no cell can sit there)


class TMEModel(mesa.Model):
    """The tumor-microenvironment model, one tick per :meth:`step`.

    A tick runs the stages in :attr:`stages` in order; each stage is a named method.
    Populations are ``mesa.Agent`` objects holding arrays, so ``model.agents`` lists
    one agent per population.

    Args:
        config: a validated :class:`~tme_abm.config.Config`.
        backend: a Backend; default built from ``config.backend`` and ``config.dtype``.
    """

    def __init__(self, config: Config, backend: Backend | None = None):
        super().__init__(rng=config.seed)
        self.config = config
        self.backend = backend or make_backend(config.backend, config.dtype)
        check_memory(config, self.backend.free_memory_bytes(),
                     "GPU memory" if self.backend.is_gpu else "host memory")
        xp = self.backend.xp
        self.dt_min = config.time.tick_min
        self.time_min = 0.0
        self.lattice = Lattice.from_config(config.lattice, self.rng)
        self.fields = FieldSet(config, self.lattice, self.backend)
        self.occupancy = xp.zeros(self.lattice.n_sites, dtype=xp.int8)
        if len(self.lattice.vessel_sites):
            self.occupancy[xp.asarray(self.lattice.vessel_sites)] = VESSEL
        self.tumor = TumorCells(self, config.tumor, self._initial_tumor_sites())
        self.occupancy[self.tumor.site] = TumorCells.code
        self.events = {"births": 0, "deaths": 0, "cleared": 0}
        self.stages = [
            ("fields", self.stage_fields),
            ("division", self.stage_division),
            ("death", self.stage_death),
            ("clearance", self.stage_clearance),
        ]

    def _initial_tumor_sites(self) -> np.ndarray:
        t = self.config.tumor
        host_occ = self.backend.to_host(self.occupancy)
        if t.archetype == "solid":
            center = [(s - 1) / 2.0 for s in self.lattice.shape]
            sites = self.lattice.sphere_sites(center, t.radius_sites)
        else:
            free = np.flatnonzero(host_occ == 0)
            k = min(t.initial_cells, len(free))
            sites = self.rng.choice(free, size=k, replace=False)
        return np.sort(sites[host_occ[sites] == 0])

    # ---- stages of one tick ------------------------------------------------------------

    def stage_fields(self) -> None:
        """Solve all fields over one tick with the living cells as sources and sinks."""
        sources = self.fields.sources({"tumor": self.tumor.site[self.tumor.alive]})
        self.fields.step(sources, self.config.time.field_substeps)

    def stage_division(self) -> None:
        o2 = self.fields.at("oxygen", self.tumor.site)
        self.events["births"] = self.tumor.divide(o2, self.dt_min, self.rng)

    def stage_death(self) -> None:
        o2 = self.fields.at("oxygen", self.tumor.site)
        self.events["deaths"] = self.tumor.die(o2, self.time_min + self.dt_min, self.dt_min, self.rng)

    def stage_clearance(self) -> None:
        self.events["cleared"] = self.tumor.clear(self.time_min + self.dt_min)

    def step(self) -> None:
        """Advance one tick (``config.time.tick_min`` minutes)."""
        for _name, stage in self.stages:
            stage()
        self.time_min += self.dt_min

    # ---- reporting -------------------------------------------------------------------

    def record(self) -> dict[str, float]:
        """Host scalars describing the current state (one time-series row)."""
        row = {"tick": float(self.steps), "time_min": self.time_min}
        row.update({k: float(v) for k, v in self.tumor.counts().items()})
        row.update(self.fields.summaries(self.config.output.hypoxic_threshold_mmHg))
        return row
