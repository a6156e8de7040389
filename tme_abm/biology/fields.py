"""The reaction-diffusion fields of a model: field specs -> one solver, the cells' sources,
summaries."""

from __future__ import annotations

import numpy as np

from ..engine.backend import Backend
from ..engine.diffusion import NOFLUX, DiffusionSolver, FieldGrid, Sources
from ..engine.diffusion.solver import TOLERANCE
from ..engine.lattice import FACES, Lattice
from .perfusion import PER_MM2, krogh_exchange_per_min, max_density_per_mm2


class FieldSet:
    """All fields of a model, solved together by one :class:`DiffusionSolver`.

    Args:
        fields: name -> field spec, in solver order (the config's enabled
            ``FieldConfig``: units, diffusion_um2_per_min, decay_per_min, initial,
            vessel_value, boundary, secretion_per_min and uptake_per_min per cell type).
        lattice: the lattice (shape, spacing, vessel sites, replicates).
        backend: where the fields live.
        dt_min: LOD field step, minutes.
        schemes: ``steady``, ``implicit`` or ``lod`` per field (default: all lod).
        tolerance: relative residual of the multigrid solves.
        microvessels: (R, n_grid) microvessels per um^2 of every site (host), for the
            perfused fields; capillary_radius_um: their radius (docs/model.md, "Perfusion").

    Attributes:
        names: field names, in solver order.
        units: units per field.
        solver: the DiffusionSolver; ``solver.values`` is (F, R, *shape) for R replicates.
    """

    def __init__(self, fields: dict, lattice: Lattice, backend: Backend, dt_min: float,
                 schemes: dict[str, str] | None = None, tolerance: float = TOLERANCE,
                 microvessels: np.ndarray | None = None, capillary_radius_um: float = 5.0):
        self.backend = backend
        self.lattice = lattice
        self._specs = fields
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
        grid = FieldGrid(lattice.shape, lattice.spacing_um, [fields[n].diffusion_um2_per_min for n in self.names],
                         [fields[n].decay_per_min for n in self.names], faces, lattice.vessel_sites, vessel_values,
                         lattice.replicates)
        self.solver = DiffusionSolver(grid, dt_min, initial=np.array([fields[n].initial for n in self.names]),
                                      backend=backend, schemes=[(schemes or {}).get(n, "lod") for n in self.names],
                                      tolerance=tolerance, substeps=[getattr(fields[n], "substeps", 1)
                                                                     for n in self.names])
        self._rates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.perfused = [i for i, n in enumerate(self.names) if getattr(fields[n], "perfused", False)]
        self.capillary_radius_um = capillary_radius_um
        self.microvessels: np.ndarray | None = None
        if self.perfused:
            self.set_microvessels(np.zeros((lattice.replicates, lattice.n_grid)) if microvessels is None
                                  else microvessels)

    def set_microvessels(self, density_per_um2: np.ndarray) -> None:
        """Set the (R, n_grid) microvessel densities (per um^2, host) and with them every
        perfused field's exchange rate and supply at each site."""
        density = np.array(density_per_um2, dtype=np.float64).reshape(self.lattice.replicates, -1)
        self.microvessels = density
        nf, n = len(self.names), self.lattice.n_sites
        kappa = np.zeros((nf, n))
        for f in self.perfused:
            spec = self._specs[self.names[f]]
            kappa[f] = krogh_exchange_per_min(spec.diffusion_um2_per_min, density.reshape(-1),
                                              self.capillary_radius_um)
        values = np.array([0.0 if self._specs[x].vessel_value is None else self._specs[x].vessel_value
                           for x in self.names])
        xp, dtype = self.backend.xp, self.backend.dtype
        self._exchange = xp.asarray(kappa, dtype=dtype)  # (F, R*n_grid) uptake-like rate, 1/min
        self._supply = xp.asarray(kappa * values[:, None], dtype=dtype)  # (F, R*n_grid) field units/min

    def scale_microvessels(self, sites, factor: float) -> None:
        """Multiply the microvessel density at flat ``sites`` ((k,) host, all replicates)
        by ``factor`` (radiotherapy's vascular normalisation), up to the largest density
        at which the Krogh term is defined (nothing without a perfused field)."""
        if self.microvessels is None:
            return
        m = self.microvessels.reshape(-1).copy()
        sites = np.asarray(sites, dtype=np.int64)
        top = max_density_per_mm2(self.capillary_radius_um) * PER_MM2
        m[sites] = np.minimum(m[sites] * factor, top)
        self.set_microvessels(m)

    def rates(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(secretion, uptake): (F,) host base rates of cell type ``kind`` per field
        (field units per minute; 1/minute), zero where a field names no rate for it."""
        r = self._rates.get(kind)
        if r is None:
            sec, upt = (np.array([getattr(self._specs[n], key).get(kind, 0.0) for n in self.names])
                        for key in ("secretion_per_min", "uptake_per_min"))
            r = self._rates[kind] = (sec, upt)
        return r

    @property
    def values(self):
        """(F, R, *shape) current field values on the device, R replicates."""
        return self.solver.values

    def field(self, name: str):
        """(R, *shape) view of one field."""
        return self.solver.field(self.index[name])

    def canonical(self, name: str):
        """(R * n_grid,) field ``name`` in canonical flat order (a view where the solver
        holds it so, else a copy)."""
        return self.backend.xp.ascontiguousarray(self.field(name)).reshape(-1)

    def at(self, name: str, sites):
        """Values of field ``name`` at flat ``sites`` ((k,) device array)."""
        return self.solver.sample(sites, self.index[name])

    def add_at(self, name: str, sites, amount: float) -> None:
        """Add ``amount`` to field ``name`` at flat ``sites`` (a pulse, e.g. radiotherapy)."""
        v = self.solver.field(self.index[name])
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
            pop.fill_sources(sec[:, off:off + n], upt[:, off:off + n], *self.rates(pop.kind))
            off += n
        if not self.perfused:
            return Sources(sites, sec, upt)
        # every site exchanges the perfused fields with blood: the sources cover all sites
        dense_sec, dense_upt = self._supply.copy(), self._exchange.copy()
        dense_sec[:, sites] += sec
        dense_upt[:, sites] += upt
        return Sources(xp.arange(self.lattice.n_sites, dtype=xp.int64), dense_sec, dense_upt, every_site=True)

    def step(self, sources: Sources, n_steps: int) -> None:
        self.solver.step(sources, n_steps=n_steps)

    def summaries(self) -> dict:
        """``<field>_mean``, ``_min`` and ``_max`` over the lattice, each an (R,) device
        array, per replicate."""
        xp = self.backend.xp
        v = self.solver.values.reshape(len(self.names), self.lattice.replicates, -1)
        means, mins, maxs = v.mean(axis=2, dtype=xp.float64), v.min(axis=2), v.max(axis=2)
        out = {}
        for i, n in enumerate(self.names):
            out[f"{n}_mean"] = means[i]
            out[f"{n}_min"] = mins[i]
            out[f"{n}_max"] = maxs[i]
        return out
