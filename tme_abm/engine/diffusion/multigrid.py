"""Fields solved as one linear system per step: quasi-steady fields and unsplit
backward Euler, by multigrid-preconditioned conjugate gradients.

Each solve finds, for each of its fields,

    (sigma + lambda + U(x)) u - D * laplacian(u) = sigma * u_old + S(x)

with ``sigma = 0`` for a quasi-steady field (a field whose slowest mode relaxes much
faster than the field step, like oxygen, is at the end of a step at the steady state
of the cells that act on it) and ``sigma = 1/dt`` for one backward-Euler step of a
slower field (unsplit, so its steady state is exact and vessel voxels hold their
value exactly at any step; the LOD step holds them only to first order in D dt/h^2),
with u held at vessel voxels and the face conditions of the LOD solver (a fixed face
value ``g`` as the ghost value ``2g - u_0``, or no flux), by conjugate gradients
preconditioned with one geometric multigrid V-cycle, warm-started from the field's
last solution. Cell-centred, 5-point (2D) or 7-point (3D) Laplacian, the same
discretisation as the LOD step, so the two agree at steady state up to the LOD's
splitting error.

The solve stops when the residual on the free voxels satisfies
``||b - A u||_2 <= tol * ||b||_2`` (b: secretion, vessel and face terms), checked
every ``check_every`` iterations: the only host synchronisation of the solve, so on a
GPU the iterations otherwise stay on the device. The matrix is a symmetric M-matrix,
so the exact solution is non-negative; the iterate is clipped at zero, a change
below the tolerance. Arrays are (Fs, *shape): all steady fields of a model at once,
in float64 whatever the model's dtype (the residual tolerance is below float32's
resolution).

Multigrid (written once over ``xp``, so NumPy and CuPy run the same code): coarse
levels halve every axis (ceil for odd sizes) down to at most 64 voxels, and
re-discretise the operator at twice the spacing, with the reaction term averaged over
the fine voxels a coarse voxel covers (a vessel voxel counts with the coupling of a
voxel fixed on every side, ``2 * ndim * D / h^2``, so a coarse voxel holding a vessel
is held there as well). Smoothing: one red-black Gauss-Seidel sweep before (red, then
black) and after (black, then red) the coarse correction, which keeps the V-cycle
symmetric, as conjugate gradients needs; restriction is the sum over the block / 2^ndim
and prolongation piecewise constant (its transpose, up to that factor); the coarsest
level is solved exactly (a dense inverse here, a Cholesky factor in the compiled code).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..backend import Array, Backend
from .grid import FieldGrid, neighbour_weights

try:
    from .fused import FusedMultigrid
except ImportError:  # without Numba the array code solves on the CPU too (slower)
    FusedMultigrid = None  # type: ignore[assignment, misc]

# The coarsest level, at most this many voxels, is solved exactly (a dense inverse per
# solve): below it, NumPy's per-call overhead, not arithmetic, sets the cost of a level.
_DENSE_MAX = 64


def _sl(nd_total: int, axis: int, s: slice) -> tuple:
    idx = [slice(None)] * nd_total
    idx[axis] = s
    return tuple(idx)


class _Level:
    """One grid of the hierarchy: shape, spacing, neighbour weights and parity."""

    def __init__(self, xp, shape: tuple[int, ...], spacing: float, diffusion: np.ndarray,
                 face_weights: np.ndarray):
        nf, nd = len(diffusion), len(shape)
        self.shape = shape
        self.k = xp.asarray((diffusion / spacing**2).reshape((nf,) + (1,) * nd), dtype=xp.float64)
        self.wsum = xp.asarray(neighbour_weights(shape, face_weights), dtype=xp.float64)
        grids = np.indices(shape).sum(axis=0)
        self.red = xp.asarray(grids % 2 == 0)
        self.black = xp.asarray(grids % 2 == 1)
        # (dst, src) slice pairs of the neighbour sum, one pair per axis direction
        self.shifts = [(_sl(nd + 1, a + 1, slice(1, None)), _sl(nd + 1, a + 1, slice(None, -1)))
                       for a in range(nd) if shape[a] > 1]
        self.shifts += [(d_, s_)[::-1] for d_, s_ in self.shifts]
        self.scratch = xp.empty((nf, *shape))
        # restriction / prolongation to the next level: a zero-padded copy of even size
        self.coarse_shape = tuple((n + 1) // 2 for n in shape)
        self.padded = xp.zeros((nf, *(2 * m for m in self.coarse_shape)))  # stays zero outside
        self.prolonged = xp.empty_like(self.padded)
        self.inner = (slice(None),) + tuple(slice(0, n) for n in shape)
        split = [nf]
        for m in self.coarse_shape:
            split += [m, 2]
        self.split = tuple(split)
        # the 2^ndim voxels of each coarse block: one strided view of ``padded`` each
        self.block_views = [(slice(None),) + tuple(slice(o, None, 2) for o in offs)
                            for offs in itertools.product((0, 1), repeat=nd)]
        self.spread = (slice(None),) + tuple(x for _ in range(nd) for x in (slice(None), None))
        # per solve
        self.diag: Array = None
        self.inv_diag: Array = None
        self.count: Array = None
        self.inverse: Array = None  # the coarsest level's dense inverse


class MultigridSolver:
    """Steady states or backward-Euler steps of the fields of a :class:`~.grid.FieldGrid`
    with per-voxel uptake and secretion.

    Each (field, replicate) is solved as a field of its own: slab ``f * R + r`` of the
    (Fs = F * R, *shape) arrays, so a field's replicates lie one after another as in the
    LOD buffer. A replicate stops iterating once all its fields meet the tolerance,
    exactly where a solve of that replicate alone would stop.

    Args:
        grid: the fields' lattice, coefficients (every D > 0) and boundaries; vessels hold
            the fields whose ``vessel_values`` are not NaN.
        backend: where the arrays live.
        tol: relative residual at which a solve stops.
        check_every: iterations between convergence checks (host synchronisations) of
            the array code.
        max_iter: iterations after which a solve gives up (raises).
        fused: on NumPy, solve with the compiled loops of :mod:`.fused` (the default);
            False runs the array code, their twin.
    """

    def __init__(self, grid: FieldGrid, backend: Backend, tol: float = 1e-6, check_every: int = 2,
                 max_iter: int = 200, fused: bool = True):
        xp = backend.xp
        self.backend = backend
        self.replicates = n_rep = grid.replicates
        self.shape = grid.shape
        self.ndim = grid.ndim
        spacing_um = grid.spacing_um
        self.diffusion = np.repeat(grid.diffusion_um2_per_min, n_rep)
        self.decay = np.repeat(grid.decay_per_min, n_rep)
        self.n_fields = nf = len(self.diffusion)
        if (self.diffusion <= 0).any():
            raise ValueError("a steady-state field must diffuse (D > 0)")
        faces = np.repeat(grid.face_values, n_rep, axis=0)
        self.tol = float(tol)
        self.check_every = int(check_every)
        self.max_iter = int(max_iter)
        self.iterations: list[int] = []  # per solve, for benchmarks and tests
        fixed = grid.fixed_voxels().reshape(nf, *self.shape)
        values = np.nan_to_num(np.repeat(grid.vessel_values, n_rep))
        self.has_steady_state = np.array([self.decay[f] > 0 or fixed[f].any() or not np.isnan(faces[f]).all()
                                          for f in range(nf)])

        shapes, spacings = [self.shape], [float(spacing_um)]
        while int(np.prod(shapes[-1])) > _DENSE_MAX:
            shapes.append(tuple((n + 1) // 2 for n in shapes[-1]))
            spacings.append(spacings[-1] * 2.0)
        face_w = np.where(np.isnan(faces), 0.0, 2.0)
        self.fused = FusedMultigrid(shapes, spacings, self.diffusion[::n_rep], face_w[::n_rep], n_rep) \
            if fused and not backend.is_gpu and FusedMultigrid is not None else None
        """The compiled CPU solve (:mod:`.fused`), or None: the array code below (CuPy, or
        NumPy when ``fused=False``, the twin the tests compare it with)."""
        self.levels: list[_Level] = [] if self.fused is not None else \
            [_Level(xp, sh, h, self.diffusion, face_w) for sh, h in zip(shapes, spacings)]
        if self.levels:
            coarsest = self.levels[-1]
            n_c = int(np.prod(coarsest.shape))
            adj = np.zeros((n_c, n_c))
            idx = np.arange(n_c).reshape(coarsest.shape)
            for a in range(self.ndim):
                i = idx[_sl(self.ndim, a, slice(None, -1))].ravel()
                j = idx[_sl(self.ndim, a, slice(1, None))].ravel()
                adj[i, j] = adj[j, i] = 1.0
            self._coarse_adj = xp.asarray(adj)
        self._fixed_value = values
        self._fixed_mask = xp.asarray(fixed)
        # constant part of the right-hand side: fixed faces (2 k g on the face voxels)
        # and fixed neighbours (k * value per fixed neighbour), zero on fixed voxels
        b0 = np.zeros((nf, *self.shape))
        k = self.diffusion / spacing_um**2
        for f in range(nf):
            for a in range(self.ndim):
                for side, s in ((0, 0), (1, -1)):
                    g = faces[f, a, side]
                    if not np.isnan(g):
                        b0[f][_sl(self.ndim, a, slice(s, s + 1 if s == 0 else None))] += 2 * k[f] * g
        fixed_nb = np.zeros_like(b0)  # each voxel's fixed neighbours' values, summed
        held = np.where(fixed, values.reshape((nf,) + (1,) * self.ndim), 0.0)
        for a in range(self.ndim):
            if self.shape[a] > 1:
                fixed_nb[_sl(self.ndim + 1, a + 1, slice(1, None))] += held[_sl(self.ndim + 1, a + 1, slice(None, -1))]
                fixed_nb[_sl(self.ndim + 1, a + 1, slice(None, -1))] += held[_sl(self.ndim + 1, a + 1, slice(1, None))]
        b0 = xp.asarray(b0 + k.reshape((nf,) + (1,) * self.ndim) * fixed_nb)
        self._b_const = xp.where(self._fixed_mask, 0.0, b0)
        self._decay = xp.asarray(self.decay.reshape((nf,) + (1,) * self.ndim))
        if self.fused is None:  # field-sized arrays only the array code reads (24 B per voxel)
            self.free = xp.asarray(~fixed, dtype=xp.float64)
            self._fixed_vals = xp.asarray(np.where(fixed, values.reshape((nf,) + (1,) * self.ndim), 0.0))
            self._fixed_coupling = xp.asarray(
                (2 * self.ndim * k).reshape((nf,) + (1,) * self.ndim)) * (1.0 - self.free)

    # ---- stencil pieces --------------------------------------------------------------

    @staticmethod
    def _neighbour_sum(lvl: _Level, u, out):
        """Sum of each voxel's neighbours inside the lattice, (Fs, *shape), into ``out``."""
        out.fill(0)
        for dst, src in lvl.shifts:
            out[dst] += u[src]
        return out

    def _apply(self, lvl: _Level, u):
        """A u on a level (no masking), a new array. Operations work in place where they
        can: batches of replicates make these arrays large, and each temporary costs a
        fresh allocation."""
        ns = self._neighbour_sum(lvl, u, lvl.scratch)
        ns *= lvl.k
        au = lvl.diag * u
        au -= ns
        return au

    @staticmethod
    def _restrict(u, fine: _Level):
        """(Fs, *fine) -> (Fs, *coarse) block sums over 2^ndim voxels (zero outside)."""
        fine.padded[fine.inner] = u
        views = fine.block_views
        out = fine.padded[views[0]] + fine.padded[views[1]]
        for v in views[2:]:
            out += fine.padded[v]
        return out

    @staticmethod
    def _prolong(e, fine: _Level):
        """Piecewise-constant (Fs, *coarse) -> (Fs, *fine), a view of fine.prolonged."""
        fine.prolonged.reshape(fine.split)[...] = e[fine.spread]
        return fine.prolonged[fine.inner]

    def _smooth(self, lvl: _Level, u, b, order) -> None:
        """Gauss-Seidel half-sweeps ``u = (b + k * neighbours) / diag`` on each mask, in place."""
        xp = self.backend.xp
        for mask in order:
            new = self._neighbour_sum(lvl, u, lvl.scratch)
            new *= lvl.k
            new += b
            new *= lvl.inv_diag
            xp.copyto(u, new, where=mask)

    def _vcycle(self, r, depth: int = 0):
        """One symmetric V-cycle for A e = r from e = 0."""
        lvl = self.levels[depth]
        if depth == len(self.levels) - 1:
            return (lvl.inverse @ r.reshape(r.shape[0], -1, 1)).reshape(r.shape)
        e = r * lvl.inv_diag  # first red half-sweep from zero
        e *= lvl.red
        self._smooth(lvl, e, r, (lvl.black,))
        res = self._apply(lvl, e)
        xp = self.backend.xp
        xp.subtract(r, res, out=res)
        coarse = self._restrict(res, lvl)
        coarse *= 0.5**self.ndim
        e += self._prolong(self._vcycle(coarse, depth + 1), lvl)
        self._smooth(lvl, e, r, (lvl.black, lvl.red))
        return e

    # ---- the solve -------------------------------------------------------------------

    def _setup(self, uptake, inv_dt) -> None:
        """Diagonals of every level for this solve's uptake and 1/dt."""
        c = self._decay + uptake
        if inv_dt is not None:
            c = c + inv_dt
        fine = self.levels[0]
        fine.diag = c + fine.k * fine.wsum
        fine.inv_diag = 1.0 / fine.diag
        c_eff = c * self.free + self._fixed_coupling
        xp = self.backend.xp
        for prev, lvl in zip(self.levels[:-1], self.levels[1:]):
            if lvl.count is None:  # fine voxels inside the lattice per coarse voxel
                lvl.count = self._restrict(xp.ones_like(c_eff), prev)
            c_eff = self._restrict(c_eff, prev) / lvl.count
            lvl.diag = c_eff + lvl.k * lvl.wsum
            lvl.inv_diag = 1.0 / lvl.diag
        last = self.levels[-1]
        nf = self.n_fields
        n_c = self._coarse_adj.shape[0]
        m = -last.k.reshape(nf, 1, 1) * self._coarse_adj
        m[:, xp.arange(n_c), xp.arange(n_c)] = last.diag.reshape(nf, n_c)
        last.inverse = xp.linalg.inv(m)

    def solve(self, u, uptake, secretion, inv_dt=None, slabs=None) -> int:
        """Overwrite ``u`` ((Fs, *shape), any float dtype, its current values the first
        guess) with the solution for per-voxel ``uptake`` (1/min) and ``secretion``
        (field units/min), both (Fs, *shape) float64: the steady state where ``inv_dt``
        ((Fs, 1, ...) 1/min) is 0 or None, one backward-Euler step of dt from ``u``
        where it is 1/dt. ``slabs``: (Fs,) host bool, the slabs to solve (None: all;
        the others keep their values). Returns the iterations taken (the most any slab
        took): each slab (a field of a replicate) stops at its own tolerance."""
        if self.fused is not None:
            return self._solve_fused(self.fused, u, uptake, secretion, inv_dt, slabs)
        xp = self.backend.xp
        self._setup(uptake, inv_dt)
        fine = self.levels[0]
        free = self.free
        x = xp.where(self._fixed_mask, 0.0, u.astype(xp.float64))
        b = self._b_const + secretion * free
        if inv_dt is not None:
            b = b + inv_dt * x
        r = (b - self._apply(fine, x)) * free
        axes = tuple(range(1, 1 + self.ndim))
        b_norm = self.backend.to_host(xp.sqrt((b * b).sum(axis=axes)))
        target = self.tol * b_norm
        it = 0
        done = self._converged(r, target, axes)
        if slabs is not None:
            done |= ~np.asarray(slabs)
        if not done.all():
            frozen = self._frozen(done)
            z = self._vcycle(r) * free
            p = z
            rz = (r * z).sum(axis=axes, keepdims=True)
            while True:
                ap = self._apply(fine, p)
                ap *= free
                pap = (p * ap).sum(axis=axes, keepdims=True)
                alpha = rz / xp.where(pap > 0, pap, 1.0)
                if frozen is None:
                    x += alpha * p
                else:  # converged slabs keep the iterate they stopped at
                    x = xp.where(frozen, x, x + alpha * p)
                r -= alpha * ap
                it += 1
                if it % self.check_every == 0 or it >= self.max_iter:
                    done |= self._converged(r, target, axes)
                    if done.all():
                        break
                    if it >= self.max_iter:
                        raise RuntimeError(f"steady-state solve did not reach tolerance {self.tol:g} in "
                                           f"{self.max_iter} iterations")
                    frozen = self._frozen(done)
                z = self._vcycle(r)
                z *= free
                rz_new = (r * z).sum(axis=axes, keepdims=True)
                p *= rz_new / xp.where(rz > 0, rz, 1.0)
                p += z
                rz = rz_new
        xp.maximum(x, 0.0, out=x)
        x += self._fixed_vals
        if slabs is None:
            u[...] = x
        else:
            solved = xp.asarray(np.flatnonzero(slabs))
            u[solved] = x[solved]
        self.iterations.append(it)
        return it

    def _solve_fused(self, fused: FusedMultigrid, u, uptake, secretion, inv_dt, slabs) -> int:
        """:meth:`solve` by the compiled loops of :mod:`.fused`: one field after another,
        each in one replicate after another."""
        n_rep = self.replicates
        most = 0
        for f in range(self.n_fields // n_rep):
            if slabs is not None and not slabs[f * n_rep]:  # a field's replicates are solved together
                continue
            field = slice(f * n_rep, (f + 1) * n_rep)
            view = u[field]
            own = (view if view.flags.c_contiguous else view.copy()).reshape(n_rep, -1)  # the field's own memory
            up = uptake[field].reshape(n_rep, -1)
            its = fused.solve(f, own, self.decay[f * n_rep], up, secretion[field].reshape(n_rep, -1),
                              self._b_const[field].reshape(n_rep, -1), self._fixed_mask[field].reshape(n_rep, -1),
                              self._fixed_value[f * n_rep], 0.0 if inv_dt is None else float(inv_dt[f * n_rep].flat[0]),
                              self.tol, self.max_iter,
                              steady_reaction=not self.backend.to_host(up.any()))
            if (its < 0).any():
                raise RuntimeError(f"steady-state solve did not reach tolerance {self.tol:g} in "
                                   f"{self.max_iter} iterations")
            if not view.flags.c_contiguous:
                view[...] = own.reshape(view.shape)
            most = max(most, int(its.max()))
        self.iterations.append(most)
        return most

    def _frozen(self, done: np.ndarray):
        """(Fs, 1, ...) device bool of the ``done`` slabs, or None if none is."""
        if not done.any():
            return None
        return self.backend.xp.asarray(done.reshape((-1,) + (1,) * self.ndim))

    def _converged(self, r, target: np.ndarray, axes) -> np.ndarray:
        """(Fs,) host bool: slabs that meet their residual target."""
        xp = self.backend.xp
        norms = self.backend.to_host(xp.sqrt((r * r).sum(axis=axes)))
        return np.asarray(norms <= target)


def relaxation_rate_per_min(diffusion_um2_per_min: float, decay_per_min: float, extent_um: float,
                            fixed: bool) -> float:
    """An estimate of how fast a field forgets its state: its decay, plus, if vessels or
    faces fix it, the slowest diffusive mode between the fixed voxels, D (pi / L)^2
    with L their distance (the mean vessel spacing, or the lattice's longest extent), in
    1/min."""
    rate = float(decay_per_min)
    if fixed:
        rate += float(diffusion_um2_per_min) * (math.pi / float(extent_um)) ** 2
    return rate
