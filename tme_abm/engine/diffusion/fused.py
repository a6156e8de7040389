"""The multigrid-preconditioned conjugate-gradient solve of :mod:`.multigrid`, fused into
compiled loops (Numba): the CPU implementation. The array code of :mod:`.multigrid` is
its twin (and the CuPy path); ``tests/test_multigrid.py`` holds the two to the same
iterates.

One call solves one field in every replicate of a batch, one replicate after another
(each slab stays in the cache while it is solved), each to its own tolerance: the
smoother, residual, restriction, prolongation, the coarsest level's direct solve and the
CG updates run in compiled loops, with no Python and no temporary array per step.

Every level is stored with a halo: one voxel of zeros around the lattice on every side
(the z sides too in 3D), which no kernel writes. A neighbour outside the lattice then
reads 0.0, so the stencils have no branch and their rows vectorise, a block of the
restriction that sticks out of an odd-sized lattice sums zeros, and the CG's sums and
vector updates run over the whole level. Every operation follows the array code's order
(neighbour sums in the same order, red-black half-sweeps, the same coarse-level
coefficients), so the two agree to rounding: adding a halo's 0.0 changes no sum; the
sums over the lattice are the one place they differ (four running sums here, pairwise
in NumPy: ~1e-16 relative).

Levels lie one after another in one flat buffer per kind; ``geo`` gives each level's
extents (nz, ny, nx; nz = 1 in 2D), the index of its voxel (0, 0, 0), its strides in z
and y (x is 1), its first index and its size with the halo. Kernels are compiled on first
use and cached on disk (``cache=True``): a fresh install pays the compile once
(docs/architecture.md gives the time).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .grid import neighbour_weights

_jit = njit(cache=True, nogil=True, error_model="numpy")
_U = np.uint64
# Indices are unsigned: a signed index is checked for wrapping around (negative
# indexing) at every access, which made the stencils 4-5x slower and unvectorised.
_ONE = _U(1)


@_jit
def _cholesky(m):
    """Factorise the SPD matrix ``m`` in place (its lower triangle becomes L, m = L L^T)."""
    n = m.shape[0]
    for j in range(n):
        d = m[j, j]
        for q in range(j):
            d -= m[j, q] * m[j, q]
        d = np.sqrt(d)
        m[j, j] = d
        for i in range(j + 1, n):
            s = m[i, j]
            for q in range(j):
                s -= m[i, q] * m[j, q]
            m[i, j] = s / d


@_jit
def _half_sweep(E, R, INV, g, k, parity, three_d):
    """Gauss-Seidel on the voxels of one colour (``(z + y + x) % 2 == parity``) of level
    ``g``: ``e = (r + k * neighbours(e)) / diag``. The neighbour sum is the array code's
    order: the lower neighbour along each axis, then the upper one."""
    first, sz, sy = _U(g[3]), _U(g[4]), _U(g[5])
    for z in range(g[0]):
        for y in range(g[1]):
            row = first + _U(z) * sz + _U(y) * sy
            if three_d:
                for x in range((parity + z + y) % 2, g[2], 2):
                    j = row + _U(x)
                    s = E[j - sz] + E[j - sy] + E[j - _ONE] + E[j + sz] + E[j + sy] + E[j + _ONE]
                    E[j] = (s * k + R[j]) * INV[j]
            else:
                for x in range((parity + y) % 2, g[2], 2):
                    j = row + _U(x)
                    s = E[j - sy] + E[j - _ONE] + E[j + sy] + E[j + _ONE]
                    E[j] = (s * k + R[j]) * INV[j]


@_jit
def _operator(U, DIAG, g, k, B, OUT, residual, three_d):
    """``OUT = B - A u`` (``residual``) or ``OUT = A u`` on level ``g``, with
    ``(A u)_i = diag_i u_i - k neighbours(u)_i``."""
    first, sz, sy, nx = _U(g[3]), _U(g[4]), _U(g[5]), g[2]
    for z in range(g[0]):
        for y in range(g[1]):
            row = first + _U(z) * sz + _U(y) * sy
            if three_d:
                if residual:
                    for x in range(nx):
                        j = row + _U(x)
                        s = U[j - sz] + U[j - sy] + U[j - _ONE] + U[j + sz] + U[j + sy] + U[j + _ONE]
                        OUT[j] = B[j] - (DIAG[j] * U[j] - s * k)
                else:
                    for x in range(nx):
                        j = row + _U(x)
                        s = U[j - sz] + U[j - sy] + U[j - _ONE] + U[j + sz] + U[j + sy] + U[j + _ONE]
                        OUT[j] = DIAG[j] * U[j] - s * k
            elif residual:
                for x in range(nx):
                    j = row + _U(x)
                    s = U[j - sy] + U[j - _ONE] + U[j + sy] + U[j + _ONE]
                    OUT[j] = B[j] - (DIAG[j] * U[j] - s * k)
            else:
                for x in range(nx):
                    j = row + _U(x)
                    s = U[j - sy] + U[j - _ONE] + U[j + sy] + U[j + _ONE]
                    OUT[j] = DIAG[j] * U[j] - s * k


@_jit
def _restrict(F, gf, C, gc, scale, three_d):
    """Level ``gc`` of ``C`` = the sum of each 2x2(x2) block of level ``gf`` of ``F``
    times ``scale``, in the array code's order of the block's voxels (a block that
    sticks out of the fine lattice sums its halo's zeros)."""
    ff, fz, fy = _U(gf[3]), _U(gf[4]), _U(gf[5])
    cf, cz, cy = _U(gc[3]), _U(gc[4]), _U(gc[5])
    for Z in range(gc[0]):
        for Y in range(gc[1]):
            crow = cf + _U(Z) * cz + _U(Y) * cy
            frow = ff + _U(2 * Z) * fz + _U(2 * Y) * fy
            for X in range(gc[2]):
                i = frow + _U(2 * X)
                s = F[i] + F[i + _ONE] + F[i + fy] + F[i + fy + _ONE]
                if three_d:
                    s = s + F[i + fz] + F[i + fz + _ONE] + F[i + fz + fy] + F[i + fz + fy + _ONE]
                C[crow + _U(X)] = s * scale


@_jit
def _prolong_add(E, gf, gc):
    """Level ``gf`` of ``E`` += level ``gc`` of ``E`` (piecewise constant: each fine
    voxel gets its coarse parent's value)."""
    ff, fz, fy = _U(gf[3]), _U(gf[4]), _U(gf[5])
    cf, cz, cy = _U(gc[3]), _U(gc[4]), _U(gc[5])
    for z in range(gf[0]):
        for y in range(gf[1]):
            row = ff + _U(z) * fz + _U(y) * fy
            crow = cf + _U(z // 2) * cz + _U(y // 2) * cy
            for x in range(gf[2]):
                E[row + _U(x)] += E[crow + _U(x // 2)]


@_jit
def _zero(a, start, size):
    for i in range(start, start + size):
        a[i] = 0.0


@_jit
def _dot(a, b, n):
    """``sum(a[:n] * b[:n])`` in four running sums (one chain of dependent additions
    would cost four times the loop's arithmetic)."""
    s0 = s1 = s2 = s3 = 0.0
    m = n - n % 4
    for i in range(0, m, 4):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
    for i in range(m, n):
        s0 += a[i] * b[i]
    return (s0 + s1) + (s2 + s3)


@_jit
def _coarse_solve(m, geo_c, R, E, tmp):
    """The coarsest level exactly: ``L L^T e = r`` with the factor of :func:`_cholesky`,
    its voxels in C order."""
    n = m.shape[0]
    first, sz, sy, nyx, nx = _U(geo_c[3]), _U(geo_c[4]), _U(geo_c[5]), geo_c[1] * geo_c[2], geo_c[2]
    for i in range(n):
        j = first + _U(i // nyx) * sz + _U((i // nx) % geo_c[1]) * sy + _U(i % nx)
        s = R[j]
        for q in range(i):
            s -= m[i, q] * tmp[q]
        tmp[i] = s / m[i, i]
    for i in range(n - 1, -1, -1):
        s = tmp[i]
        for q in range(i + 1, n):
            s -= m[q, i] * tmp[q]
        tmp[i] = s / m[i, i]
    for i in range(n):
        E[first + _U(i // nyx) * sz + _U((i // nx) % geo_c[1]) * sy + _U(i % nx)] = tmp[i]


@_jit
def _vcycle(R, E, RES, DIAG, INV, geo, ks, scale, chol, tmp, three_d):
    """One symmetric V-cycle for ``A e = r`` (level 0 of ``R``) from e = 0, into level 0
    of ``E``: down the levels (red from zero, black, the residual restricted), the
    coarsest solved directly, up the levels (the correction prolonged, black, red)."""
    last = geo.shape[0] - 1
    for lv in range(last):
        g, k = geo[lv], ks[lv]
        _zero(E, g[6], g[7])
        _half_sweep(E, R, INV, g, k, 0, three_d)  # from zero: e = r / diag on red
        _half_sweep(E, R, INV, g, k, 1, three_d)
        _operator(E, DIAG, g, k, R, RES, True, three_d)
        _restrict(RES, g, R, geo[lv + 1], scale, three_d)
    _coarse_solve(chol, geo[last], R, E, tmp)
    for lv in range(last - 1, -1, -1):
        g, k = geo[lv], ks[lv]
        _prolong_add(E, g, geo[lv + 1])
        _half_sweep(E, R, INV, g, k, 1, three_d)
        _half_sweep(E, R, INV, g, k, 0, three_d)


@_jit
def _setup(decay, uptake, inv_dt, fixed, ndim, geo, ks, WSUM, CNT, EFF, DIAG, INV, chol):
    """Every level's diagonal (and its inverse) for this solve's reaction
    ``c = decay + uptake [+ 1/dt]`` and the coarsest level's matrix, factorised: the
    reaction averaged onto coarse voxels, a fixed voxel counting with the coupling of a
    voxel fixed on every side (``2 ndim k``)."""
    g, k = geo[0], ks[0]
    first, sz, sy, ny, nx = _U(g[3]), _U(g[4]), _U(g[5]), g[1], g[2]
    for z in range(g[0]):
        for y in range(ny):
            row, v0 = first + _U(z) * sz + _U(y) * sy, (z * ny + y) * nx
            for x in range(nx):
                j, v = row + _U(x), v0 + x
                c = decay + uptake[v] + inv_dt
                DIAG[j] = c + k * WSUM[j]
                INV[j] = 1.0 / DIAG[j]
                EFF[j] = 2 * ndim * k if fixed[v] else c
    last = geo.shape[0] - 1
    three_d = ndim == 3
    for lv in range(1, last + 1):
        g, k = geo[lv], ks[lv]
        _restrict(EFF, geo[lv - 1], EFF, g, 1.0, three_d)
        first, sz, sy = _U(g[3]), _U(g[4]), _U(g[5])
        for z in range(g[0]):
            for y in range(g[1]):
                row = first + _U(z) * sz + _U(y) * sy
                for x in range(g[2]):
                    q = row + _U(x)
                    e = EFF[q] / CNT[q]
                    EFF[q] = e
                    DIAG[q] = e + k * WSUM[q]
                    INV[q] = 1.0 / DIAG[q]
    g, k = geo[last], ks[last]
    lz, ly, lx = g[0], g[1], g[2]
    first, sz, sy = _U(g[3]), _U(g[4]), _U(g[5])
    chol[:] = 0.0
    for i in range(lz * ly * lx):
        x, y, z = i % lx, (i // lx) % ly, i // (lx * ly)
        chol[i, i] = DIAG[first + _U(z) * sz + _U(y) * sy + _U(x)]
        for step, inside in ((ly * lx, z + 1 < lz), (lx, y + 1 < ly), (1, x + 1 < lx)):
            if inside:
                chol[i, i + step] = -k
                chol[i + step, i] = -k
    _cholesky(chol)


@_jit
def _solve_slab(u, uptake, secretion, b_const, fixed, fixed_value, inv_dt, ks, tol, max_iter, geo, work, DIAG,
                INV, chol, three_d):
    """One field of one replicate (the arguments of :func:`solve_field`, one slab each);
    returns the iterations taken, -1 if ``max_iter`` did not reach the tolerance."""
    x, p, ap, b, R, E, RES, tmp, at_fixed = work
    g = geo[0]
    n0, k = g[7], ks[0]
    first, sz, sy, ny, nx = _U(g[3]), _U(g[4]), _U(g[5]), g[1], g[2]
    n_fixed = 0
    for z in range(g[0]):
        for y in range(ny):
            row, v0 = first + _U(z) * sz + _U(y) * sy, (z * ny + y) * nx
            for xi in range(nx):
                j, v = row + _U(xi), v0 + xi
                if fixed[v]:
                    x[j] = 0.0
                    b[j] = 0.0
                    at_fixed[n_fixed] = j
                    n_fixed += 1
                else:
                    x[j] = u[v]
                    bv = b_const[v] + secretion[v]
                    if inv_dt != 0.0:
                        bv = bv + inv_dt * x[j]
                    b[j] = bv
    target = np.sqrt(_dot(b, b, n0)) * tol
    _operator(x, DIAG, g, k, b, R, True, three_d)
    for q in range(n_fixed):
        R[at_fixed[q]] = 0.0
    it = 0
    if np.sqrt(_dot(R, R, n0)) > target:
        scale = 0.5 ** (3 if three_d else 2)
        _vcycle(R, E, RES, DIAG, INV, geo, ks, scale, chol, tmp, three_d)
        for q in range(n_fixed):
            E[at_fixed[q]] = 0.0  # the preconditioned residual, zero at vessel voxels
        for i in range(n0):
            p[i] = E[i]
        rz = _dot(R, E, n0)
        while True:
            _operator(p, DIAG, g, k, b, ap, False, three_d)
            for q in range(n_fixed):
                ap[at_fixed[q]] = 0.0
            pap = _dot(p, ap, n0)
            alpha = rz / (pap if pap > 0 else 1.0)
            for i in range(n0):
                x[i] += alpha * p[i]
                R[i] = R[i] - alpha * ap[i]
            it += 1
            if np.sqrt(_dot(R, R, n0)) <= target:
                break
            if it >= max_iter:
                it = -1
                break
            _vcycle(R, E, RES, DIAG, INV, geo, ks, scale, chol, tmp, three_d)
            for q in range(n_fixed):
                E[at_fixed[q]] = 0.0
            rz_new = _dot(R, E, n0)
            beta = rz_new / (rz if rz > 0 else 1.0)
            for i in range(n0):
                p[i] = p[i] * beta + E[i]
            rz = rz_new
    for z in range(g[0]):
        for y in range(ny):
            row, v0 = first + _U(z) * sz + _U(y) * sy, (z * ny + y) * nx
            for xi in range(nx):
                v = v0 + xi
                u[v] = fixed_value if fixed[v] else max(x[row + _U(xi)], 0.0)
    return it


@_jit
def solve_field(u, decay, uptake, secretion, b_const, fixed, fixed_value, inv_dt, ndim, ks, tol, max_iter, geo,
                work, setup_work, levels, ready, keep, iterations):
    """Solve one field in every replicate: ``(c + inv_dt - D lap) x = b`` on its free
    voxels, ``c = decay + uptake``, ``b = b_const + secretion [+ inv_dt u]``,
    warm-started from ``u``, until ``||b - A x|| <= tol ||b||`` in that replicate; writes
    the solutions (clipped at 0, vessel voxels at ``fixed_value``) into ``u`` and each
    replicate's iterations into ``iterations`` ((R,); -1 where ``max_iter`` did not reach
    the tolerance).

    Args:
        u: (R, n) float32 or float64, the field of each replicate (flat, C order), overwritten.
        decay: 1/min; uptake: (R, n) 1/min; secretion: (R, n) field units/min;
            b_const: (R, n) the faces' and fixed neighbours' part of b; fixed: (R, n)
            bool, the vessel voxels; fixed_value: their value.
        inv_dt: 1/dt for a backward-Euler step, 0 for the steady state.
        ndim: the lattice's dimensions (2 or 3); ks: (levels,) D / h^2 per level.
        tol, max_iter: the stopping rule.
        geo: (levels, 8) each level's layout (module docstring); work, setup_work: the
            scratch buffers (:class:`FusedMultigrid`).
        levels: (DIAG, INV, chol) each level's diagonal and inverse, the coarsest level's
            Cholesky factor, one row per replicate when ``keep``, else one row.
        ready: (R,) bool, whether a replicate's levels (``keep``) hold this reaction
            already; keep: ``c`` and ``inv_dt`` are those of the last solve (no uptake),
            so levels computed for a replicate are kept and reused.
    """
    DIAG, INV, chol = levels
    WSUM, CNT, EFF = setup_work
    three_d = ndim == 3
    for r in range(u.shape[0]):
        lr = r if keep else 0
        if not (keep and ready[r]):
            _setup(decay, uptake[r], inv_dt, fixed[r], ndim, geo, ks, WSUM, CNT, EFF, DIAG[lr], INV[lr], chol[lr])
            ready[r] = keep
        iterations[r] = _solve_slab(u[r], uptake[r], secretion[r], b_const[r], fixed[r], fixed_value, inv_dt, ks,
                                    tol, max_iter, geo, work, DIAG[lr], INV[lr], chol[lr], three_d)


class FusedMultigrid:
    """The buffers of :func:`solve_field` for the levels of a
    :class:`~.multigrid.MultigridSolver`, whose fields are solved one after another,
    each in all its replicates; and the per-field constants: D / h^2 and the neighbour
    weights per level.

    Args:
        shapes: each level's shape (C order, 2 or 3 ints), finest first.
        spacings: each level's spacing, um.
        diffusion: (F,) D per field, um^2/min.
        face_weights: (F, ndim, 2) 2.0 for a fixed face, 0.0 for a no-flux one.
        replicates: R.
    """

    def __init__(self, shapes, spacings, diffusion, face_weights, replicates: int):
        ndim = len(shapes[0])
        self.ndim, self.replicates = ndim, int(replicates)
        geo = []
        start = 0
        for shape in shapes:
            nz, ny, nx = (1,) * (3 - ndim) + tuple(int(s) for s in shape)
            pz = nz + 2 if ndim == 3 else 1
            sy, sz = nx + 2, (nx + 2) * (ny + 2)
            first = start + (sz if ndim == 3 else 0) + sy + 1
            geo.append((nz, ny, nx, first, sz, sy, start, pz * sz))
            start += pz * sz
        self.geo = np.array(geo, dtype=np.int64)
        self._total, self._coarsest = start, int(np.prod(shapes[-1]))
        self.ks = np.asarray(diffusion, float)[:, None] / np.asarray(spacings, float)[None, :] ** 2
        self._wsum = np.zeros((len(diffusion), start))
        for lv, shape in enumerate(shapes):
            w = neighbour_weights(shape, np.asarray(face_weights, float))
            for f in range(len(diffusion)):
                self._interior(self._wsum[f], lv)[...] = w[f]
        ones = np.zeros(start)  # fine voxels inside the lattice per coarse voxel
        counts = np.zeros(start)
        for lv in range(len(shapes)):
            self._interior(ones, lv)[...] = 1.0
        for lv in range(1, len(shapes)):
            _restrict(ones, self.geo[lv - 1], counts, self.geo[lv], 1.0, ndim == 3)
        self._counts = counts
        n0 = int(self.geo[0, 7])
        self.work = (*(np.zeros(n0) for _ in range(4)), *(np.zeros(start) for _ in range(3)),
                     np.zeros(self._coarsest), np.zeros(n0, dtype=np.uint64))
        self._eff = np.zeros(start)
        self._scratch = self._new_levels(1)
        self._kept: dict[int, tuple[float, tuple, np.ndarray]] = {}
        """Field -> (1/dt, levels, ready) of the fields whose reaction holds no uptake
        (their levels are kept per replicate and reused from one solve to the next)."""
        self._ready = np.zeros(self.replicates, bool)
        self._iterations = np.zeros(self.replicates, dtype=np.int64)

    def _interior(self, buffer: np.ndarray, level: int) -> np.ndarray:
        """The view of ``buffer``'s level ``level`` without its halo, (nz, ny, nx) in 3D,
        (ny, nx) in 2D."""
        nz, ny, nx, _first, sz, sy, start, size = (int(v) for v in self.geo[level])
        pz = size // sz
        padded = buffer[start:start + size].reshape(pz, ny + 2, nx + 2)
        inner = padded[1:-1, 1:-1, 1:-1] if self.ndim == 3 else padded[0, 1:-1, 1:-1]
        return inner

    def _new_levels(self, rows: int) -> tuple:
        return (np.zeros((rows, self._total)), np.zeros((rows, self._total)),
                np.zeros((rows, self._coarsest, self._coarsest)))

    def solve(self, field: int, u, decay: float, uptake, secretion, b_const, fixed, fixed_value: float,
              inv_dt: float, tol: float, max_iter: int, steady_reaction: bool = False) -> np.ndarray:
        """Solve field ``field`` in every replicate: ``u`` ((R, n), overwritten),
        ``uptake``, ``secretion``, ``b_const`` ((R, n) float64) and ``fixed`` ((R, n)
        bool) as :func:`solve_field` takes them. Returns the iterations of each replicate
        ((R,), -1: not converged in ``max_iter``). ``steady_reaction``: ``uptake`` is zero
        (the reaction is the field's decay alone, the same at every solve), so the levels
        computed for it are kept and reused."""
        levels, ready = self._scratch, self._ready
        if steady_reaction:
            kept = self._kept.get(field)
            if kept is None or kept[0] != inv_dt:
                kept = (inv_dt, kept[1] if kept is not None else self._new_levels(self.replicates),
                        np.zeros(self.replicates, bool))
                self._kept[field] = kept
            levels, ready = kept[1], kept[2]
        solve_field(u, float(decay), uptake, secretion, b_const, fixed, float(fixed_value), float(inv_dt), self.ndim,
                    self.ks[field], float(tol), int(max_iter), self.geo, self.work,
                    (self._wsum[field], self._counts, self._eff), levels, ready, steady_reaction, self._iterations)
        return self._iterations.copy()
