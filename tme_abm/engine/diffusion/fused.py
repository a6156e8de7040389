"""The multigrid-preconditioned conjugate-gradient solve of :mod:`.multigrid`, fused into
compiled loops (Numba): the CPU implementation. The array code of :mod:`.multigrid` is
its twin (and the CuPy path); ``tests/test_multigrid.py`` holds the two to the same
iterates.

One call solves one slab (a field of one replicate) to its tolerance: the smoother,
residual, restriction, prolongation, the coarsest level's direct solve and the CG
updates run in one compiled function over that slab's arrays, which stay in cache, with
no Python and no temporary array per step. Every operation follows the array code's
order (neighbour sums in the same order, red-black half-sweeps, the same coarse-level
coefficients), so the two agree to rounding; sums over the slab are sequential here and
pairwise in NumPy, which is where they differ (~1e-16 relative).

Arrays are flat, C order over (nz, ny, nx); a 2D lattice is one z plane (its z faces are
no-flux and it has no z neighbours). Every level's arrays lie one after another in one
buffer per kind (``offs`` the start of each level, ``shapes`` its extents), so one
compiled function serves every lattice. Kernels are compiled on first use and cached on
disk (``cache=True``): a fresh install pays the compile once (docs/architecture.md gives
the time).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True, error_model="numpy")
_U = np.uint64
_ONE = np.uint64(1)
# Indices are computed as unsigned integers where they are offsets (i - 1, i + nx, ...):
# a signed index is checked for wrapping around (negative indexing) at every access,
# which made the stencils 5x slower and kept them from being vectorised.
NOT_FIXED = np.zeros(0, dtype=np.bool_)
"""No voxel fixed (the coarse levels' residual)."""


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


# The neighbour sum is written out in each kernel that needs it (the sweeps and the
# operator): a helper function called per voxel costs three times the arithmetic here
# (array arguments are reference-counted at every call). Its order is the array code's:
# the lower neighbour along each axis, then the upper one along each axis.


@_jit
def _half_sweep(E, R, INV, o, nz, ny, nx, k, parity):
    """Gauss-Seidel on the voxels of one colour (``(z + y + x) % 2 == parity``) of the level
    at ``o``: ``e = (r + k * neighbours(e)) / diag``, in place."""
    sz, snx, base = _U(ny * nx), _U(nx), _U(o)
    for z in range(nz):
        for y in range(ny):
            row = base + _U((z * ny + y) * nx)
            zl, yl, zh, yh = z > 0, y > 0, z < nz - 1, y < ny - 1
            for x in range((parity + z + y) % 2, nx, 2):
                i = row + _U(x)
                s = 0.0
                if zl:
                    s += E[i - sz]
                if yl:
                    s += E[i - snx]
                if x > 0:
                    s += E[i - _ONE]
                if zh:
                    s += E[i + sz]
                if yh:
                    s += E[i + snx]
                if x < nx - 1:
                    s += E[i + _ONE]
                E[i] = (s * k + R[i]) * INV[i]


@_jit
def _apply_rows(U, DIAG, o, nz, ny, nx, k, out, sign, base, fixed):
    """``out = base - A u`` (``sign`` -1) or ``out = A u`` (``sign`` 1; ``base`` unused)
    on the level at ``o``, ``(A u)_i = diag_i u_i - k neighbours(u)_i``, zero where
    ``fixed`` (when it is not empty: level 0). Returns the sum of ``out * out`` (-1) or of
    ``u * out`` (1)."""
    sz, snx, first = _U(ny * nx), _U(nx), _U(o)
    acc = 0.0
    check = fixed.size > 0
    for z in range(nz):
        for y in range(ny):
            row = _U((z * ny + y) * nx)
            zl, yl, zh, yh = z > 0, y > 0, z < nz - 1, y < ny - 1
            for x in range(nx):
                j = row + _U(x)
                i = first + j
                if check and fixed[j]:
                    out[i] = 0.0
                    continue
                s = 0.0
                if zl:
                    s += U[i - sz]
                if yl:
                    s += U[i - snx]
                if x > 0:
                    s += U[i - _ONE]
                if zh:
                    s += U[i + sz]
                if yh:
                    s += U[i + snx]
                if x < nx - 1:
                    s += U[i + _ONE]
                au = DIAG[i] * U[i] - s * k
                if sign < 0:
                    v = base[i] - au
                    out[i] = v
                    acc += v * v
                else:
                    out[i] = au
                    acc += U[i] * au
    return acc


@_jit
def _restrict(F, fo, nz, ny, nx, C, co, cz, cy, cx, scale):
    """Level ``co`` of ``C`` = the sum of each 2x2(x2) block of level ``fo`` of ``F``
    (voxels outside the fine lattice count 0) times ``scale``, in the array code's order
    of the block's voxels."""
    for Z in range(cz):
        for Y in range(cy):
            for X in range(cx):
                s = 0.0
                for oz in range(2):
                    for oy in range(2):
                        for ox in range(2):
                            z, y, x = 2 * Z + oz, 2 * Y + oy, 2 * X + ox
                            v = F[_U(fo + (z * ny + y) * nx + x)] if (z < nz and y < ny and x < nx) else 0.0
                            s = v if (oz == 0 and oy == 0 and ox == 0) else s + v
                C[_U(co + (Z * cy + Y) * cx + X)] = s * scale


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
def _cholesky_solve(m, rhs, ro, out, oo):
    """Solve ``L L^T out = rhs`` with the factor of :func:`_cholesky` (vectors from ``ro``
    and ``oo``)."""
    n = m.shape[0]
    for i in range(n):
        s = rhs[ro + i]
        for q in range(i):
            s -= m[i, q] * out[oo + q]
        out[oo + i] = s / m[i, i]
    for i in range(n - 1, -1, -1):
        s = out[oo + i]
        for q in range(i + 1, n):
            s -= m[q, i] * out[oo + q]
        out[oo + i] = s / m[i, i]


@_jit
def _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol):
    """One symmetric V-cycle for ``A e = r`` (level 0 of ``R``) from e = 0, into level 0 of
    ``E``: down the levels (red from zero, black, the residual restricted), the coarsest
    solved directly, up the levels (the correction prolonged, black, red)."""
    last = shapes.shape[0] - 1
    for lv in range(last):
        o, nz, ny, nx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    i = _U(o + (z * ny + y) * nx + x)
                    E[i] = R[i] * INV[i] if (z + y + x) % 2 == 0 else 0.0
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 1)
        _apply_rows(E, DIAG, o, nz, ny, nx, k, RES, -1, R, NOT_FIXED)
        _restrict(RES, o, nz, ny, nx, R, offs[lv + 1], shapes[lv + 1, 0], shapes[lv + 1, 1], shapes[lv + 1, 2],
                  scale)
    _cholesky_solve(chol, R, offs[last], E, offs[last])
    for lv in range(last - 1, -1, -1):
        o, nz, ny, nx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        co, cy, cx = offs[lv + 1], shapes[lv + 1, 1], shapes[lv + 1, 2]
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    E[_U(o + (z * ny + y) * nx + x)] += E[_U(co + ((z // 2) * cy + y // 2) * cx + x // 2)]
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 1)
        _half_sweep(E, R, INV, o, nz, ny, nx, k, 0)


@_jit
def _setup(c, fixed, ndim, fw, DIAG, INV, EFF, CNT, offs, shapes, ks, chol):
    """Every level's diagonal for this solve's reaction ``c`` (decay + uptake [+ 1/dt])
    and the coarsest level's matrix, factorised: the reaction averaged onto coarse voxels,
    a fixed voxel counting with the coupling of a voxel fixed on every side."""
    nz, ny, nx, k = shapes[0, 0], shapes[0, 1], shapes[0, 2], ks[0]
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                i = (z * ny + y) * nx + x
                DIAG[i] = c[i] + k * _wsum(z, y, x, nz, ny, nx, fw)
                INV[i] = 1.0 / DIAG[i]
                EFF[i] = 2 * ndim * k if fixed[i] else c[i]
    n_levels = shapes.shape[0]
    for lv in range(1, n_levels):
        o, lz, ly, lx, k = offs[lv], shapes[lv, 0], shapes[lv, 1], shapes[lv, 2], ks[lv]
        _restrict(EFF, offs[lv - 1], shapes[lv - 1, 0], shapes[lv - 1, 1], shapes[lv - 1, 2], EFF, o, lz, ly, lx, 1.0)
        for z in range(lz):
            for y in range(ly):
                for x in range(lx):
                    i = o + (z * ly + y) * lx + x
                    e = EFF[i] / CNT[i]
                    EFF[i] = e
                    DIAG[i] = e + k * _wsum(z, y, x, lz, ly, lx, fw)
                    INV[i] = 1.0 / DIAG[i]
    last = n_levels - 1
    o, lz, ly, lx, k = offs[last], shapes[last, 0], shapes[last, 1], shapes[last, 2], ks[last]
    chol[:] = 0.0
    for i in range(lz * ly * lx):
        chol[i, i] = DIAG[o + i]
        x, y, z = i % lx, (i // lx) % ly, i // (lx * ly)
        for step, inside in ((ly * lx, z + 1 < lz), (lx, y + 1 < ly), (1, x + 1 < lx)):
            if inside:
                chol[i, i + step] = -k
                chol[i + step, i] = -k
    _cholesky(chol)


@_jit
def solve_slab(u, c, secretion, b_const, fixed, fixed_value, inv_dt, ndim, fw, ks, tol, max_iter, work, levels,
               setup):
    """Solve one slab: ``(c + inv_dt - D lap) x = b`` on its free voxels, ``b = b_const +
    secretion [+ inv_dt u]``, warm-started from ``u``, to ``||b - A x|| <= tol ||b||``;
    writes the solution (clipped at 0, vessel voxels at ``fixed_value``) into ``u`` and
    returns the iterations taken (-1 when ``max_iter`` did not reach the tolerance).

    Args:
        u: (n,) float64, the field (flat, C order over (nz, ny, nx)), overwritten.
        c: (n,) float64 decay + uptake, 1/min.
        secretion: (n,) float64, field units/min.
        b_const: (n,) float64 the faces' and fixed neighbours' part of b.
        fixed: (n,) bool vessel voxels; fixed_value: their value.
        inv_dt: 1/dt for a backward-Euler step, 0 for the steady state.
        ndim: the lattice's dimensions (2 or 3); fw: (3, 2) face weights (2 fixed, 0 no-flux).
        ks: (levels,) D / h^2 per level; tol, max_iter: the stopping rule.
        work: the flat per-level scratch buffers (:class:`FusedMultigrid`).
        levels: the levels' diagonals, their inverses and the coarsest level's Cholesky
            factor; setup: compute them (else they hold this slab's from an earlier solve
            with the same ``c`` and ``inv_dt``).
    """
    (x, p, ap, b, ceff, R, E, RES, EFF, CNT, offs, shapes) = work
    DIAG, INV, chol = levels
    nz, ny, nx, k = shapes[0, 0], shapes[0, 1], shapes[0, 2], ks[0]
    n = nz * ny * nx
    if setup:
        for i in range(n):
            ceff[i] = c[i] + inv_dt
        _setup(ceff, fixed, ndim, fw, DIAG, INV, EFF, CNT, offs, shapes, ks, chol)
    bb = 0.0
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
            bb += bv * bv
    target = tol * np.sqrt(bb)
    rr = _apply_rows(x, DIAG, 0, nz, ny, nx, k, R, -1, b, fixed)
    it = 0
    if np.sqrt(rr) > target:
        scale = 0.5 ** ndim
        _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol)
        rz = 0.0
        for i in range(n):
            v = 0.0 if fixed[i] else E[i]
            p[i] = v
            rz += R[i] * v
        while True:
            pap = _apply_rows(p, DIAG, 0, nz, ny, nx, k, ap, 1, p, fixed)
            alpha = rz / (pap if pap > 0 else 1.0)
            rr = 0.0
            for i in range(n):
                if not fixed[i]:
                    x[i] += alpha * p[i]
                    rv = R[i] - alpha * ap[i]
                    R[i] = rv
                    rr += rv * rv
            it += 1
            if np.sqrt(rr) <= target:
                break
            if it >= max_iter:
                return -1
            _vcycle(R, E, RES, DIAG, INV, offs, shapes, ks, scale, chol)
            rz_new = 0.0
            for i in range(n):
                if not fixed[i]:
                    rz_new += R[i] * E[i]
            beta = rz_new / (rz if rz > 0 else 1.0)
            for i in range(n):
                p[i] = p[i] * beta + (0.0 if fixed[i] else E[i])
            rz = rz_new
    for i in range(n):
        u[i] = fixed_value if fixed[i] else max(x[i], 0.0)
    return it


class FusedMultigrid:
    """The per-level buffers of :func:`solve_slab` for the levels of a
    :class:`~.multigrid.MultigridSolver` (shared by its slabs, which are solved one after
    another), and the per-slab constants: face weights and D / h^2 per level.

    Args:
        shapes: each level's shape (C order, 2 or 3 ints), finest first.
        spacings: each level's spacing, um.
        diffusion: (S,) D per slab, um^2/min.
        face_weights: (S, ndim, 2) 2.0 for a fixed face, 0.0 for a no-flux one.
    """

    def __init__(self, shapes, spacings, diffusion, face_weights):
        ndim = len(shapes[0])
        self.ndim = ndim
        shapes3 = np.array([(1,) * (3 - ndim) + tuple(s) for s in shapes], dtype=np.int64)
        n_slabs = len(diffusion)
        self.fw = np.zeros((n_slabs, 3, 2))
        self.fw[:, 3 - ndim:] = face_weights
        self.ks = np.asarray(diffusion, float)[:, None] / np.asarray(spacings, float)[None, :] ** 2
        sizes = shapes3.prod(axis=1)
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        counts = np.zeros(offs[-1])  # children inside the lattice per voxel (unused on the finest level)
        for lv in range(1, len(shapes3)):
            (fz, fy, fx), (cz, cy, cx) = shapes3[lv - 1], shapes3[lv]
            _restrict(np.ones(sizes[lv - 1]), 0, fz, fy, fx, counts, offs[lv], cz, cy, cx, 1.0)
        n = int(sizes[0])
        self._level_size, self._coarsest = int(offs[-1]), int(sizes[-1])
        self.work = (*(np.zeros(n) for _ in range(5)), *(np.zeros(offs[-1]) for _ in range(4)), counts, offs,
                     shapes3)
        self._scratch = self._new_levels()
        self._kept: dict[int, tuple[float, tuple]] = {}
        """Slab -> (1/dt, levels) of the slabs whose reaction holds no uptake (their levels
        are reused from one solve to the next)."""

    def _new_levels(self) -> tuple:
        return np.zeros(self._level_size), np.zeros(self._level_size), np.zeros((self._coarsest, self._coarsest))

    def solve(self, slab: int, u, c, secretion, b_const, fixed, fixed_value: float, inv_dt: float, tol: float,
              max_iter: int, steady_reaction: bool = False) -> int:
        """Solve slab ``slab`` (its arrays in the lattice's shape; ``u`` is overwritten);
        returns the iterations taken (-1: not converged in ``max_iter``).
        ``steady_reaction``: ``c`` is the slab's decay alone (no cell takes the field up),
        the same at every solve, so the levels computed for it are kept and reused."""
        setup, levels = True, self._scratch
        if steady_reaction:
            kept = self._kept.get(slab)
            setup = kept is None or kept[0] != inv_dt
            levels = self._new_levels() if kept is None else kept[1]
            self._kept[slab] = (inv_dt, levels)
        x = np.ascontiguousarray(u, dtype=np.float64).reshape(-1)  # a float32 field: a float64 copy
        it = solve_slab(x, c.reshape(-1), secretion.reshape(-1), b_const.reshape(-1), fixed.reshape(-1),
                        float(fixed_value), float(inv_dt), self.ndim, self.fw[slab], self.ks[slab], float(tol),
                        int(max_iter), self.work, levels, setup)
        if not np.shares_memory(x, u):
            u[...] = x.reshape(u.shape)
        return it
