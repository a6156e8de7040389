"""The multigrid-preconditioned conjugate-gradient solve of :mod:`.multigrid`, fused into
compiled loops (Numba): the CPU implementation. The array code of :mod:`.multigrid` is
its twin (and the CuPy path); ``tests/test_multigrid.py`` holds the two to the same
iterates.

One call solves one field in every replicate of a batch to its tolerance: the smoother,
residual, restriction, prolongation, the coarsest level's direct solve and the CG
updates run in one compiled function, with no Python and no temporary array per step.
The replicates are *lanes*: every array holds a voxel's R values side by side (index
``voxel * R + r``), so each stencil operation runs over R contiguous numbers, which the
compiler vectorises, and a batch costs much less per replicate than a single run. Each
lane is its own CG (its own step lengths and stopping test), so lane r computes exactly
what a single run of replicate r computes; a lane that has converged keeps its iterate
while the others go on.

Every operation follows the array code's order (neighbour sums in the same order,
red-black half-sweeps, the same coarse-level coefficients), so the two agree to
rounding; sums over the lattice are sequential here and pairwise in NumPy, which is where
they differ (~1e-16 relative).

Arrays are flat, C order over (nz, ny, nx) and then the lanes; a 2D lattice is one z
plane (its z faces are no-flux and it has no z neighbours). Every level's arrays lie one
after another in one buffer per kind (``offs`` the first voxel of each level, ``shapes``
its extents), so one compiled function serves every lattice and batch. Kernels are
compiled on first use and cached on disk (``cache=True``): a fresh install pays the
compile once (docs/architecture.md gives the time).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True, error_model="numpy")
_U = np.uint64
# Indices are unsigned where they are offsets (i - 1, i + nx, ...): a signed index is
# checked for wrapping around (negative indexing) at every access, which made the
# stencils 4-5x slower and kept them from being vectorised.
# The neighbour sum is written out in each kernel that needs it (the sweeps and the
# operator): a helper function called per voxel costs more than the arithmetic (array
# arguments are reference-counted at every call). Its order is the array code's: the
# lower neighbour along each axis, then the upper one along each axis.


@_jit
def _wsum(z, y, x, nz, ny, nx, fw):
    """Neighbour weight of a voxel in the diagonal: 1 per neighbour inside the lattice, 2
    for a fixed face (``fw`` (3, 2): 2.0 or 0.0 per axis and side), 0 for a no-flux face."""
    w = 0.0
    for a in range(3):
        i, n = (z, nz) if a == 0 else (y, ny) if a == 1 else (x, nx)
        if n > 1:
            if i > 0:
                w += 1.0
            if i < n - 1:
                w += 1.0
        if i == 0:
            w += fw[a, 0]
        if i == n - 1:
            w += fw[a, 1]
    return w


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
def _half_sweep(E, R, INV, o, nz, ny, nx, k, parity, L):
    """Gauss-Seidel on the voxels of one colour (``(z + y + x) % 2 == parity``) of the level
    whose first voxel is ``o``, in every lane: ``e = (r + k * neighbours(e)) / diag``."""
    lz, ly, lx = _U(ny * nx * L), _U(nx * L), _U(L)
    for z in range(nz):
        for y in range(ny):
            row = _U((o + (z * ny + y) * nx) * L)
            zl, yl, zh, yh = z > 0, y > 0, z < nz - 1, y < ny - 1
            for x in range((parity + z + y) % 2, nx, 2):
                i = row + _U(x * L)
                xl, xh = x > 0, x < nx - 1
                for r in range(L):
                    j = i + _U(r)
                    s = 0.0
                    if zl:
                        s += E[j - lz]
                    if yl:
                        s += E[j - ly]
                    if xl:
                        s += E[j - lx]
                    if zh:
                        s += E[j + lz]
                    if yh:
                        s += E[j + ly]
                    if xh:
                        s += E[j + lx]
                    E[j] = (s * k + R[j]) * INV[j]


@_jit
def _apply_rows(U, DIAG, o, nz, ny, nx, k, out, sign, base, free, L):
    """``out = base - A u`` (``sign`` -1) or ``out = A u`` (``sign`` 1; ``base`` unused)
    on the level whose first voxel is ``o``, ``(A u)_i = diag_i u_i - k neighbours(u)_i``,
    times ``free`` (0.0 at vessel voxels, when it is not empty: level 0)."""
    lz, ly, lx = _U(ny * nx * L), _U(nx * L), _U(L)
    masked = free.size > 0
    first = _U(o * L)
    for z in range(nz):
        for y in range(ny):
            row = _U((z * ny + y) * nx * L)
            zl, yl, zh, yh = z > 0, y > 0, z < nz - 1, y < ny - 1
            for x in range(nx):
                xl, xh = x > 0, x < nx - 1
                v0 = row + _U(x * L)
                for r in range(L):
                    j = first + v0 + _U(r)
                    s = 0.0
                    if zl:
                        s += U[j - lz]
                    if yl:
                        s += U[j - ly]
                    if xl:
                        s += U[j - lx]
                    if zh:
                        s += U[j + lz]
                    if yh:
                        s += U[j + ly]
                    if xh:
                        s += U[j + lx]
                    au = DIAG[j] * U[j] - s * k
                    v = base[j] - au if sign < 0 else au
                    if masked:
                        v = v * free[v0 + _U(r)]
                    out[j] = v


@_jit
def _dots(a, b, n, L, out):
    """``out[r] = sum over the n voxels of a * b`` in lane r, in voxel order."""
    if L == 1:  # a register, not the array, holds the sum
        s = 0.0
        for v in range(n):
            s += a[v] * b[v]
        out[0] = s
        return
    out[:L] = 0.0
    for v in range(n):
        for r in range(L):
            j = _U(v * L + r)
            out[r] += a[j] * b[j]


@_jit
def _restrict(F, fo, nz, ny, nx, C, co, cz, cy, cx, scale, L):
    """Level ``co`` of ``C`` = the sum of each 2x2(x2) block of level ``fo`` of ``F``
    (voxels outside the fine lattice count 0) times ``scale``, per lane, in the array
    code's order of the block's voxels."""
    for Z in range(cz):
        for Y in range(cy):
            for X in range(cx):
                c0 = _U((co + (Z * cy + Y) * cx + X) * L)
                for r in range(L):
                    s = 0.0
                    for oz in range(2):
                        for oy in range(2):
                            for ox in range(2):
                                z, y, x = 2 * Z + oz, 2 * Y + oy, 2 * X + ox
                                inside = z < nz and y < ny and x < nx
                                v = F[_U((fo + (z * ny + y) * nx + x) * L + r)] if inside else 0.0
                                s = v if (oz == 0 and oy == 0 and ox == 0) else s + v
                    C[c0 + _U(r)] = s * scale


@_jit
def _cholesky_solve(m, rhs, ro, out, r, L, tmp):
    """Solve ``L L^T out = rhs`` for lane ``r`` with the factor of :func:`_cholesky`
    (the level's voxels from ``ro``; ``tmp``: scratch of the level's size)."""
    n = m.shape[0]
    for i in range(n):
        s = rhs[_U((ro + i) * L + r)]
        for q in range(i):
            s -= m[i, q] * tmp[q]
        tmp[i] = s / m[i, i]
    for i in range(n - 1, -1, -1):
        s = tmp[i]
        for q in range(i + 1, n):
            s -= m[q, i] * tmp[q]
        tmp[i] = s / m[i, i]
    for i in range(n):
        out[_U((ro + i) * L + r)] = tmp[i]


@_jit
def _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol, L, tmp):
    """One symmetric V-cycle for ``A e = r`` (level 0 of ``R``) from e = 0 in every lane,
    into level 0 of ``E``: down the levels (red from zero, black, the residual
    restricted), the coarsest solved directly, up the levels (the correction prolonged,
    black, red)."""
    last = shapes.shape[0] - 1
    none = np.zeros(0)
    for lv in range(last):
        o, nz, ny, nx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    red = (z + y + x) % 2 == 0
                    i = _U((o + (z * ny + y) * nx + x) * L)
                    for r in range(L):
                        E[i + _U(r)] = R[i + _U(r)] * INV[i + _U(r)] if red else 0.0
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 1, L)
        _apply_rows(E, DIAG, o, nz, ny, nx, k, RES, -1, R, none, L)
        _restrict(RES, o, nz, ny, nx, R, offs[lv + 1], shapes[lv + 1, 0], shapes[lv + 1, 1], shapes[lv + 1, 2],
                  scale, L)
    for r in range(L):
        _cholesky_solve(chol[r], R, offs[last], E, r, L, tmp)
    for lv in range(last - 1, -1, -1):
        o, nz, ny, nx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        co, cy, cx = offs[lv + 1], shapes[lv + 1, 1], shapes[lv + 1, 2]
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    i = _U((o + (z * ny + y) * nx + x) * L)
                    c = _U((co + ((z // 2) * cy + y // 2) * cx + x // 2) * L)
                    for r in range(L):
                        E[i + _U(r)] += E[c + _U(r)]
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 1, L)
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 0, L)


@_jit
def _setup(c, fixed, ndim, fw, DIAG, INV, EFF, CNT, offs, shapes, ks, chol, L):
    """Every level's diagonal, per lane, for this solve's reaction ``c`` (decay + uptake
    [+ 1/dt]) and the coarsest level's matrices, factorised: the reaction averaged onto
    coarse voxels, a fixed voxel counting with the coupling of a voxel fixed on every side."""
    nz, ny, nx, k = shapes[0, 0], shapes[0, 1], shapes[0, 2], ks[0]
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                w = k * _wsum(z, y, x, nz, ny, nx, fw)
                i = ((z * ny + y) * nx + x) * L
                for r in range(L):
                    DIAG[i + r] = c[i + r] + w
                    INV[i + r] = 1.0 / DIAG[i + r]
                    EFF[i + r] = 2 * ndim * k if fixed[i + r] else c[i + r]
    n_levels = shapes.shape[0]
    for lv in range(1, n_levels):
        o, lz, ly, lx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        _restrict(EFF, offs[lv - 1], shapes[lv - 1, 0], shapes[lv - 1, 1], shapes[lv - 1, 2], EFF, o, lz, ly, lx,
                  1.0, L)
        for z in range(lz):
            for y in range(ly):
                for x in range(lx):
                    v = o + (z * ly + y) * lx + x
                    w = k * _wsum(z, y, x, lz, ly, lx, fw)
                    for r in range(L):
                        i = v * L + r
                        e = EFF[i] / CNT[v]
                        EFF[i] = e
                        DIAG[i] = e + w
                        INV[i] = 1.0 / DIAG[i]
    last = n_levels - 1
    o, lz, ly, lx, k = offs[last], shapes[last, 0], shapes[last, 1], shapes[last, 2], ks[last]
    for r in range(L):
        m = chol[r]
        m[:] = 0.0
        for i in range(lz * ly * lx):
            m[i, i] = DIAG[(o + i) * L + r]
            x, y, z = i % lx, (i // lx) % ly, i // (lx * ly)
            for step, inside in ((ly * lx, z + 1 < lz), (lx, y + 1 < ly), (1, x + 1 < lx)):
                if inside:
                    m[i, i + step] = -k
                    m[i + step, i] = -k
        _cholesky(m)


@_jit
def solve_lanes(u, c, secretion, b_const, fixed, free, fixed_value, inv_dt, ndim, fw, ks, tol, max_iter, work,
                levels, setup, iterations, L):
    """Solve one field in every lane: ``(c + inv_dt - D lap) x = b`` on its free voxels,
    ``b = b_const + secretion [+ inv_dt u]``, warm-started from ``u``, until each lane
    meets ``||b - A x|| <= tol ||b||`` on its own; writes the solutions (clipped at 0,
    vessel voxels at ``fixed_value``) into ``u`` and each lane's iterations into
    ``iterations`` ((L,); -1 where ``max_iter`` did not reach the tolerance).

    Args:
        u: (n * L,) float64, the field (flat, voxel-major, lanes innermost), overwritten.
        c: decay + uptake, 1/min; secretion: field units/min; b_const: the faces' and
            fixed neighbours' part of b; fixed: vessel voxels (bool), free: 1.0 - fixed
            (all (n * L,) in the layout of ``u``); fixed_value: their value.
        inv_dt: 1/dt for a backward-Euler step, 0 for the steady state.
        ndim: the lattice's dimensions (2 or 3); fw: (3, 2) face weights (2 fixed, 0 no-flux).
        ks: (levels,) D / h^2 per level; tol, max_iter: the stopping rule.
        work: the flat per-level scratch buffers (:class:`FusedMultigrid`).
        levels: the levels' diagonals, their inverses and the coarsest level's Cholesky
            factors; setup: compute them (else they hold these lanes' from an earlier
            solve with the same ``c`` and ``inv_dt``).
    """
    (x, p, ap, b, ceff, R, E, RES, EFF, CNT, offs, shapes, tmp) = work
    DIAG, INV, chol = levels
    nz, ny, nx, k = shapes[0, 0], shapes[0, 1], shapes[0, 2], ks[0]
    n = nz * ny * nx * L
    if setup:
        for i in range(n):
            ceff[i] = c[i] + inv_dt
        _setup(ceff, fixed, ndim, fw, DIAG, INV, EFF, CNT, offs, shapes, ks, chol, L)
    for i in range(n):
        if fixed[i]:
            x[i] = 0.0
            b[i] = 0.0
        else:
            x[i] = u[i]
            bv = b_const[i] + secretion[i]
            if inv_dt != 0.0:
                bv = bv + inv_dt * u[i]
            b[i] = bv
    nv = nz * ny * nx
    bb = np.zeros(L)
    _dots(b, b, nv, L, bb)
    target = np.sqrt(bb) * tol
    rr = np.zeros(L)
    _apply_rows(x, DIAG, 0, nz, ny, nx, k, R, -1, b, free, L)
    _dots(R, R, nv, L, rr)
    active = np.sqrt(rr) > target
    iterations[:] = 0
    if active.any():
        scale = 0.5 ** ndim
        _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol, L, tmp)
        for i in range(n):
            p[i] = E[i] * free[i]
        rz, pap, rz_new = np.zeros(L), np.zeros(L), np.zeros(L)
        alpha = np.zeros(L)
        _dots(R, p, nv, L, rz)
        it = 0
        while True:
            _apply_rows(p, DIAG, 0, nz, ny, nx, k, ap, 1, p, free, L)
            _dots(p, ap, nv, L, pap)
            for r in range(L):
                alpha[r] = rz[r] / (pap[r] if pap[r] > 0 else 1.0)
            for v in range(nv):
                for r in range(L):
                    i = v * L + r
                    if active[r]:  # a converged lane keeps its iterate
                        x[i] += alpha[r] * p[i]
                    R[i] = R[i] - alpha[r] * ap[i]
            _dots(R, R, nv, L, rr)
            it += 1
            for r in range(L):
                if active[r]:
                    iterations[r] = it
                    if np.sqrt(rr[r]) <= target[r]:
                        active[r] = False
            if not active.any():
                break
            if it >= max_iter:
                for r in range(L):
                    if active[r]:
                        iterations[r] = -1
                break
            _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol, L, tmp)
            for i in range(n):
                E[i] = E[i] * free[i]  # the preconditioned residual, zero at vessel voxels
            _dots(R, E, nv, L, rz_new)
            for v in range(nv):
                for r in range(L):
                    i = v * L + r
                    p[i] = p[i] * (rz_new[r] / (rz[r] if rz[r] > 0 else 1.0)) + E[i]
            rz[:] = rz_new
    for i in range(n):
        u[i] = fixed_value if fixed[i] else max(x[i], 0.0)


@_jit
def solve_single(u, c, secretion, b_const, fixed, free, fixed_value, inv_dt, ndim, fw, ks, tol, max_iter, work,
                 levels, setup, iterations):
    """:func:`solve_lanes` of a single run: the constant lane count 1 reaches every kernel
    as a compile-time constant, so their loops are those of one replicate."""
    solve_lanes(u, c, secretion, b_const, fixed, free, fixed_value, inv_dt, ndim, fw, ks, tol, max_iter, work, levels,
                setup, iterations, 1)


class FusedMultigrid:
    """The per-level buffers of :func:`solve_lanes` for the levels of a
    :class:`~.multigrid.MultigridSolver`, whose fields are solved one after another, each
    in all its replicates (lanes) at once; and the per-field constants: face weights and
    D / h^2 per level.

    Args:
        shapes: each level's shape (C order, 2 or 3 ints), finest first.
        spacings: each level's spacing, um.
        diffusion: (F,) D per field, um^2/min.
        face_weights: (F, ndim, 2) 2.0 for a fixed face, 0.0 for a no-flux one.
        lanes: the replicates R.
    """

    def __init__(self, shapes, spacings, diffusion, face_weights, lanes: int):
        ndim = len(shapes[0])
        self.ndim, self.lanes = ndim, int(lanes)
        shapes3 = np.array([(1,) * (3 - ndim) + tuple(s) for s in shapes], dtype=np.int64)
        self.fw = np.zeros((len(diffusion), 3, 2))
        self.fw[:, 3 - ndim:] = face_weights
        self.ks = np.asarray(diffusion, float)[:, None] / np.asarray(spacings, float)[None, :] ** 2
        sizes = shapes3.prod(axis=1)
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        counts = np.zeros(offs[-1])  # children inside the lattice per voxel (unused on the finest level)
        for lv in range(1, len(shapes3)):  # per axis, the 1 or 2 finer voxels a coarse one covers
            per_axis = [np.minimum(2, f - 2 * np.arange(c)) for f, c in zip(shapes3[lv - 1], shapes3[lv])]
            counts[offs[lv]:offs[lv + 1]] = np.einsum("i,j,k->ijk", *per_axis).reshape(-1)
        n, total, L = int(sizes[0]) * self.lanes, int(offs[-1]) * self.lanes, self.lanes
        self._total, self._coarsest = total, int(sizes[-1])
        self.work = (*(np.zeros(n) for _ in range(5)), *(np.zeros(total) for _ in range(4)), counts, offs, shapes3,
                     np.zeros(max(self._coarsest, L)))
        self._scratch = self._new_levels()
        self._kept: dict[int, tuple[float, tuple]] = {}
        """Field -> (1/dt, levels) of the fields whose reaction holds no uptake (their levels
        are reused from one solve to the next)."""
        self._iterations = np.zeros(L, dtype=np.int64)

    def _new_levels(self) -> tuple:
        return (np.zeros(self._total), np.zeros(self._total),
                np.zeros((self.lanes, self._coarsest, self._coarsest)))

    def solve(self, field: int, u, c, secretion, b_const, fixed, free, fixed_value: float, inv_dt: float,
              tol: float, max_iter: int, steady_reaction: bool = False) -> np.ndarray:
        """Solve field ``field`` in every lane: ``u``, ``c``, ``secretion``, ``b_const``,
        ``fixed`` and ``free`` are (n * R,) in the lanes' layout (``u`` is overwritten).
        Returns the iterations of each lane ((R,), -1: not converged in ``max_iter``).
        ``steady_reaction``: ``c`` is the field's decay alone (no cell takes it up), the
        same at every solve, so the levels computed for it are kept and reused."""
        setup, levels = True, self._scratch
        if steady_reaction:
            kept = self._kept.get(field)
            setup = kept is None or kept[0] != inv_dt
            levels = self._new_levels() if kept is None else kept[1]
            self._kept[field] = (inv_dt, levels)
        args = (u, c, secretion, b_const, fixed, free, float(fixed_value), float(inv_dt), self.ndim, self.fw[field],
                self.ks[field], float(tol), int(max_iter), self.work, levels, setup, self._iterations)
        if self.lanes == 1:
            solve_single(*args)
        else:
            solve_lanes(*args, self.lanes)
        return self._iterations.copy()
