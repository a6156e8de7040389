"""One solver for all fields of a model. Each field has a scheme:

- ``steady``: solved for its steady state given the cells, once per :meth:`step`
  (:mod:`.multigrid`);
- ``implicit``: unsplit backward Euler, one multigrid solve per field step
  (:mod:`.multigrid`), exact at steady state and at vessel voxels;
- ``lod``: the implicit LOD step (:mod:`.lod`), cheapest, with first-order splitting
  errors at cell uptake and vessel voxels.

The caller sees one (F, R, *shape) set of fields whatever the schemes, R replicates of
the lattice (1 for a single run) that never exchange anything."""

from __future__ import annotations

import numpy as np

from ..backend import Array, Backend, make_backend
from .grid import FieldGrid
from .lod import LODSolver, Sources
from .multigrid import MultigridSolver, relaxation_rate_per_min

TOLERANCE = 1e-4
"""Default relative residual of a multigrid solve (docs/architecture.md: the field's
error is then about 2e-4 of its boundary value)."""

SCHEMES = ("steady", "implicit", "lod")

QUASI_STEADY_RELAXATIONS = 3.0
"""A field is solved for its steady state when its slowest mode relaxes by at least
e^-3 (95%) over one field solve: relaxation rate x solve interval >= 3."""


def quasi_steady(diffusion_um2_per_min: float, decay_per_min: float, fixed: bool, extent_um: float,
                 interval_min: float) -> bool:
    """Whether a field relaxes fast enough to be solved as quasi-steady: its slowest
    relaxation rate (decay, plus D (pi/L)^2 if vessels or faces fix it) times the
    interval between field solves (minutes) is at least :data:`QUASI_STEADY_RELAXATIONS`."""
    if diffusion_um2_per_min <= 0:
        return False
    rate = relaxation_rate_per_min(diffusion_um2_per_min, decay_per_min, extent_um, fixed)
    return rate * interval_min >= QUASI_STEADY_RELAXATIONS


class DiffusionSolver:
    """The fields of a :class:`~.grid.FieldGrid` on a 2D or 3D lattice, stepped by LOD or
    solved by multigrid for their steady state or a backward-Euler step, per field.

    Args:
        grid: the fields' lattice, coefficients, boundaries, vessels and replicates.
        dt_min: LOD (and implicit) field step, minutes.
        initial: scalar or (F,) initial value, or (F, *shape) initial field.
        backend: a :class:`~tme_abm.engine.backend.Backend`; default NumPy float64.
        schemes: (F,) ``steady``, ``implicit`` or ``lod`` per field (default all lod).
        tolerance: relative residual at which a multigrid solve stops.
        substeps: (F,) backward-Euler steps an implicit field takes per field step of
            ``dt_min`` (each of ``dt_min / substeps``; default 1); the other schemes
            ignore it.
    """

    def __init__(self, grid: FieldGrid, dt_min: float, *, initial=0.0, backend: Backend | None = None,
                 schemes=None, tolerance: float = TOLERANCE, substeps=None):
        self.backend = backend or make_backend("numpy", "float64")
        self.grid = grid
        self.replicates = n_rep = grid.replicates
        self.shape = grid.shape
        self.ndim = grid.ndim
        self.spacing_um = grid.spacing_um
        nf = self.n_fields = grid.n_fields
        if not float(dt_min) > 0:
            raise ValueError(f"dt_min must be > 0, got {dt_min}")
        self._dt = float(dt_min)
        self.n_sites = grid.n_sites
        self.dtype = self.backend.dtype
        self.schemes = ["lod"] * nf if schemes is None else [str(x) for x in schemes]
        if len(self.schemes) != nf or any(x not in SCHEMES for x in self.schemes):
            raise ValueError(f"schemes must give one of {', '.join(SCHEMES)} per field ({nf}), got {schemes}")
        lod = np.array([f for f in range(nf) if self.schemes[f] == "lod"], dtype=np.int64)
        st = np.array([f for f in range(nf) if self.schemes[f] != "lod"], dtype=np.int64)
        self._lod_fields, self._mg_fields = lod, st
        self._where = {int(f): ("lod", j) for j, f in enumerate(lod)} | {int(f): ("mg", j) for j, f in enumerate(st)}
        init = np.asarray(initial, dtype=float)
        per_field = init.ndim > 0

        self.lod = LODSolver(grid.subset(lod), dt_min, initial=init[lod] if per_field else init,
                             backend=self.backend) if len(lod) else None
        self.mg = None
        if len(st):
            xp = self.backend.xp
            mg_grid = grid.subset(st)
            ns = len(st) * n_rep
            self.mg = MultigridSolver(mg_grid, self.backend, tol=tolerance,
                                      check_every=3 if self.backend.is_gpu else 1)
            steady = np.array([self.schemes[int(f)] == "steady" for f in st])
            has_steady = np.asarray(self.mg.has_steady_state.reshape(len(st), n_rep).all(axis=1))
            if not has_steady[steady].all():
                f = int(st[steady & ~has_steady][0])
                raise ValueError(f"field {f}: no steady state (no decay, no fixed voxels, no fixed face)")
            self._implicit = np.repeat(~steady, n_rep)
            sub = np.ones(nf, dtype=np.int64) if substeps is None else np.asarray(substeps, dtype=np.int64)
            if sub.shape != (nf,) or (sub < 1).any():
                raise ValueError(f"substeps must give an int >= 1 per field ({nf}), got {substeps}")
            self._substeps = np.repeat(np.where(steady, 1, sub[st]), n_rep)
            self._inv_dt: Array = None
            self._inv_dt_for: float | None = None
            start = np.broadcast_to(
                init[st].reshape(-1, 1, *[1] * self.ndim) if init.ndim == 1 else
                (init.reshape(nf, -1, *self.shape)[st] if per_field else init), (len(st), n_rep, *self.shape))
            start = np.where(mg_grid.fixed_voxels().reshape(len(st), n_rep, *self.shape),
                             np.nan_to_num(mg_grid.vessel_values).reshape(-1, 1, *[1] * self.ndim), start)
            self._mg_values = xp.asarray(start.reshape(ns, *self.shape), dtype=self.dtype)
            self._uptake = xp.zeros((len(st), n_rep * self.n_sites), dtype=xp.float64)
            self._secretion = xp.zeros((len(st), n_rep * self.n_sites), dtype=xp.float64)
            self._st_dev = xp.asarray(st)
            self._lod_dev = xp.asarray(lod)

    # ---- fields ------------------------------------------------------------------------

    @property
    def _mg_fields_view(self):
        """(Fs, R, *shape) view of the multigrid fields."""
        return self._mg_values.reshape(len(self._mg_fields), self.replicates, *self.shape)

    @property
    def values(self):
        """Current fields, (F, R, *shape) on the backend's device, canonical axis order: a
        writable view when every field is stepped by LOD, else a new array (write
        through :meth:`field`)."""
        if self.mg is None and self.lod is not None:
            return self.lod.values
        if self.lod is None:
            return self._mg_fields_view
        xp = self.backend.xp
        out = xp.empty((self.n_fields, self.replicates, *self.shape), dtype=self.dtype)
        out[self._lod_dev] = self.lod.values
        out[self._st_dev] = self._mg_fields_view
        return out

    def field(self, f: int):
        """(R, *shape) writable view of field ``f``."""
        kind, j = self._where[int(f)]
        return self.lod.values[j] if kind == "lod" and self.lod is not None else self._mg_fields_view[j]

    def sample(self, sites, field: int | None = None):
        """Field values at canonical flat lattice indices ``sites`` ((k,) ints, replicate
        r's offset by ``r * prod(shape)``): (F, k), or (k,) of one ``field`` (index)."""
        if field is None:
            if self.mg is None and self.lod is not None:
                return self.lod.sample(sites)
            xp = self.backend.xp
            return xp.stack([self.sample(sites, f) for f in range(self.n_fields)])
        kind, j = self._where[int(field)]
        if kind == "lod" and self.lod is not None:
            return self.lod.sample(sites, j)
        return self._mg_fields_view[j].reshape(-1)[sites]

    @property
    def dt_min(self) -> float:
        return self._dt

    def set_dt(self, dt_min: float) -> None:
        """A new LOD field step (minutes)."""
        if not float(dt_min) > 0:
            raise ValueError(f"dt_min must be > 0, got {dt_min}")
        self._dt = float(dt_min)
        if self.lod is not None:
            self.lod.set_dt(dt_min)

    def step(self, sources: Sources | None = None, n_steps: int = 1) -> None:
        """Advance the lod and implicit fields by ``n_steps * dt_min`` minutes and solve
        the steady fields for the cells' ``sources`` (held fixed over the steps)."""
        if self.lod is not None:
            sub = sources
            if sources is not None and self.mg is not None:
                sub = Sources(sources.sites, sources.secretion[self._lod_dev], sources.uptake[self._lod_dev],
                              sources.every_site)
            self.lod.step(sub, n_steps=n_steps)
        if self.mg is not None:
            self._solve_multigrid(self.mg, sources, n_steps)

    def _solve_multigrid(self, mg: MultigridSolver, sources: Sources | None, n_steps: int) -> None:
        xp = self.backend.xp
        if sources is not None and sources.every_site:  # a copy: a scatter of every site costs 7x more
            self._uptake[...] = sources.uptake[self._st_dev]
            self._secretion[...] = sources.secretion[self._st_dev]
        else:
            self._uptake.fill(0)
            self._secretion.fill(0)
            if sources is not None:
                sites = xp.asarray(sources.sites, dtype=xp.int64)
                if sites.size:
                    self._uptake[:, sites] = sources.uptake[self._st_dev]
                    self._secretion[:, sites] = sources.secretion[self._st_dev]
        shape = (len(self._mg_fields) * self.replicates, *self.shape)
        uptake, secretion = self._uptake.reshape(shape), self._secretion.reshape(shape)
        if not self._implicit.any():
            mg.solve(self._mg_values, uptake, secretion)
            return
        if self._inv_dt_for != self._dt:  # 1/dt per field, rebuilt when dt changes
            inv_dt = self._implicit * self._substeps / self._dt
            self._inv_dt = xp.asarray(inv_dt.reshape(-1, *[1] * self.ndim))
            self._inv_dt_for = self._dt
        for _ in range(n_steps):
            for k in range(int(self._substeps.max())):  # the fields with more substeps go on alone
                mg.solve(self._mg_values, uptake, secretion, self._inv_dt, None if k == 0 else self._substeps > k)

    def total_mass(self):
        """(F,) sum of each field over the lattice times voxel volume (host float64)."""
        sums = self.backend.to_host(self.values.reshape(self.n_fields, -1).sum(axis=1, dtype=np.float64))
        return sums * self.spacing_um**self.ndim

    # ---- checkpoints -----------------------------------------------------------------

    def get_state(self, replicate: int = 0) -> tuple[np.ndarray, int]:
        """(F, n_sites) host copy of ``replicate``'s fields as the solvers hold them (LOD
        fields in the LOD buffer's layout) and that layout: with :meth:`set_state`, a
        solver continues bit for bit (steady fields warm-start from these values)."""
        out = np.empty((self.n_fields, self.n_sites), dtype=self.dtype)
        lead = 0
        if self.lod is not None:
            buf, lead = self.lod.get_state()
            out[self._lod_fields] = buf.reshape(len(self._lod_fields), self.replicates, -1)[:, replicate]
        if self.mg is not None:
            mg = self.backend.to_host(self._mg_fields_view[:, replicate])
            out[self._mg_fields] = mg.reshape(-1, self.n_sites)
        return out, lead

    def set_state(self, buffers: list[np.ndarray], lead: int) -> None:
        """Restore every replicate's fields: ``buffers[r]`` from :meth:`get_state` (all
        in the same layout ``lead``)."""
        if len(buffers) != self.replicates or not 0 <= lead < self.ndim \
                or any(b.shape != (self.n_fields, self.n_sites) for b in buffers):
            raise ValueError(f"solver state of {len(buffers)} replicates, lead {lead} does not fit "
                             f"{self.replicates} replicates of {self.n_fields} fields on {self.shape}")
        stacked = np.stack(buffers, axis=1)  # (F, R, n_sites)
        if self.lod is not None:
            self.lod.set_state(stacked[self._lod_fields].reshape(len(self._lod_fields), -1), lead)
        if self.mg is not None:
            self._mg_values[...] = self.backend.xp.asarray(
                stacked[self._mg_fields].reshape(-1, *self.shape), dtype=self.dtype)

    def close(self) -> None:
        """Stop the helper thread of the LOD engine."""
        if self.lod is not None:
            self.lod.close()
