"""The set of reaction-diffusion fields of a run: config -> solver, sources, summaries."""

from __future__ import annotations

import numpy as np

from .engine.backend import Backend
from .config import Config
from .engine.diffusion import NOFLUX, DiffusionSolver, Sources
from .engine.lattice import FACES, Lattice


class FieldSet:
    """All enabled fields of a config, solved together by one :class:`DiffusionSolver`.

    Attributes:
        names: field names, in solver order.
        units: units per field.
        solver: the DiffusionSolver; ``solver.values`` is (F, *shape).
    """

    def __init__(self, cfg: Config, lattice: Lattice, backend: Backend):
        self.backend = backend
        self.lattice = lattice
        fields = cfg.enabled_fields
        self.names = list(fields)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.units = [fields[n].units for n in self.names]
        nd = lattice.ndim
        face_names = FACES[-2 * nd:]
        faces = np.full((len(self.names), nd, 2), NOFLUX)
        for f, name in enumerate(self.names):
            for a in range(nd):
                for side in range(2):
                    bc = fields[name].boundary.face(face_names[2 * a + side])
                    if bc.kind == "dirichlet":
                        faces[f, a, side] = bc.value
        vessel_values = np.array(
            [np.nan if fields[n].vessel_value is None else fields[n].vessel_value for n in self.names]
        )
        self.solver = DiffusionSolver(
            lattice.shape,
            lattice.spacing_um,
            [fields[n].diffusion_um2_per_min for n in self.names],
            [fields[n].decay_per_min for n in self.names],
            dt_min=cfg.field_dt_min,
            face_values=faces,
            vessel_sites=lattice.vessel_sites,
            vessel_values=vessel_values,
            initial=np.array([fields[n].initial for n in self.names]),
            backend=backend,
        )
        # (F,) per cell type secretion and uptake rates, host arrays
        self._secretion = {
            t: np.array([fields[n].secretion_per_min.get(t, 0.0) for n in self.names])
            for t in ("tumor", "car_t", "monocyte", "granulocyte")
        }
        self._uptake = {
            t: np.array([fields[n].uptake_per_min.get(t, 0.0) for n in self.names])
            for t in ("tumor", "car_t", "monocyte", "granulocyte")
        }

    @property
    def values(self):
        """(F, *shape) current field values on the device."""
        return self.solver.values

    def field(self, name: str):
        """(*shape) view of one field."""
        return self.solver.values[self.index[name]]

    def at(self, name: str, sites):
        """Values of field ``name`` at flat ``sites`` ((k,) device array)."""
        return self.solver.sample(sites, self.index[name])

    def add_at(self, name: str, sites, amount: float) -> None:
        """Add ``amount`` to field ``name`` at flat ``sites`` (a pulse, e.g. radiotherapy)."""
        v = self.solver.values[self.index[name]]
        xp = self.backend.xp
        coords = xp.unravel_index(xp.asarray(sites, dtype=xp.int64), v.shape)
        v[coords] += amount

    def sources(self, populations) -> Sources:
        """Secretion and uptake of every cell of ``populations`` (each fills its columns
        from its rules), for the next field solve."""
        xp = self.backend.xp
        total = sum(len(p) for p in populations)
        nf = len(self.names)
        sites = xp.empty(total, dtype=xp.int64)
        sec = xp.zeros((nf, total), dtype=self.backend.dtype)
        upt = xp.zeros((nf, total), dtype=self.backend.dtype)
        off = 0
        for pop in populations:
            n = len(pop)
            if n == 0:
                continue
            sites[off:off + n] = pop.data["site"]
            pop.fill_sources(sec[:, off:off + n], upt[:, off:off + n], self._secretion[pop.kind],
                             self._uptake[pop.kind])
            off += n
        return Sources(sites, sec, upt)

    def step(self, sources: Sources, n_steps: int) -> None:
        self.solver.step(sources, n_steps=n_steps)

    def summaries(self, hypoxic_threshold_mmHg: float) -> dict[str, float]:
        """Host scalars: mean/min/max per field, mean pH, hypoxic fraction of the lattice."""
        xp = self.backend.xp
        v = self.solver.values.reshape(len(self.names), -1)
        means = self.backend.to_host(v.mean(axis=1, dtype=xp.float64))
        mins = self.backend.to_host(v.min(axis=1))
        maxs = self.backend.to_host(v.max(axis=1))
        out = {}
        for i, n in enumerate(self.names):
            out[f"{n}_mean"] = float(means[i])
            out[f"{n}_min"] = float(mins[i])
            out[f"{n}_max"] = float(maxs[i])
        if "protons" in self.index:
            h = xp.maximum(v[self.index["protons"]].astype(xp.float64), 1e-12)
            out["ph_mean"] = float(self.backend.to_host((6.0 - xp.log10(h)).mean()))
        out["hypoxic_fraction"] = float(
            self.backend.to_host((v[self.index["oxygen"]] < hypoxic_threshold_mmHg).mean())
        )
        return out
