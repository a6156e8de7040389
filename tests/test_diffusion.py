"""The LOD solver against analytic solutions, conservation laws and a dense solve."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DX, UPTAKE_COLUMN, host, uptake_column

from tme_abm.engine.backend import make_backend
from tme_abm.engine.diffusion import NOFLUX, DiffusionSolver, FieldGrid, Sources
from tme_abm.engine.diffusion.fused_lod import _COLUMNS, thomas_columns
from tme_abm.engine.diffusion.thomas import axis_coefficients, rotate_numpy, thomas_sweep_numpy, thomas_sweep_sink_numpy


def test_scaled_thomas_matches_dense_solve():
    """One line of the scaled Thomas recurrence equals numpy.linalg.solve of the LOD matrix."""
    n, r, kappa, lo, hi = 9, 3.7, 0.05, 2.0, NOFLUX
    c = axis_coefficients(n, np.array([r]), np.array([kappa]), np.array([lo]), np.array([hi]), np.float64)
    A = np.diag(np.full(n, 1 + 2 * r + kappa)) - r * np.eye(n, k=1) - r * np.eye(n, k=-1)
    A[0, 0] = 1 + 3 * r + kappa  # fixed low face (ghost 2c - u0)
    A[-1, -1] = 1 + r + kappa  # no-flux high face
    d = np.random.default_rng(1).random(n)
    rhs = d.copy()
    rhs[0] += 2 * r * lo
    v = d.reshape(1, n, 1).copy()
    thomas_sweep_numpy(v, c.cp, c.rhs_lo, c.rhs_hi)
    np.testing.assert_allclose(v[0, :, 0] * c.scale[0], np.linalg.solve(A, rhs), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_thomas_sweep_equals_its_numpy_twin(dtype):
    """The compiled LOD sweep (engine/diffusion/fused_lod.py) gives bit for bit what
    thomas_sweep_numpy gives, on some fields and a column range that spans several of
    its column blocks and ends inside one, with replicates and fixed faces; the rest of
    the buffer is untouched."""
    nf, n_rep, n, w = 3, 2, 17, 2 * _COLUMNS + 37
    c = axis_coefficients(n, np.array([3.7, 0.4, 12.0]), np.array([0.05, 0.0, 0.2]), np.array([2.0, NOFLUX, 1.0]),
                          np.array([NOFLUX, 0.5, 1.0]), dtype)
    v = np.random.default_rng(2).random((nf, n_rep, n, w)).astype(dtype)
    twin = v.copy()
    thomas_columns(v, c.cp, c.rhs_lo, c.rhs_hi, 1, 3, 5, w - 3)
    thomas_sweep_numpy(twin[1:3, :, :, 5:w - 3], c.cp[1:3], c.rhs_lo[1:3], c.rhs_hi[1:3])
    assert np.array_equal(v, twin)


def test_rotate_twin_is_scaled_transpose():
    src = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5)
    dst = np.empty((2, 5, 3))
    rotate_numpy(src, dst, np.array([1.0, 0.5]))
    np.testing.assert_array_equal(dst[0], src[0].T)
    np.testing.assert_array_equal(dst[1], 0.5 * src[1].T)


def _reference_steps(shape, D, lam, dt, init, faces, vessels, vv, n_steps, sinks=None, alternate=True):
    """The LOD step written plainly on canonical arrays (np.moveaxis per axis, the
    kernels' twins on whole arrays), alternating the axis order like the solver."""
    nd = len(shape)
    nf = len(D)
    r = np.asarray(D) * dt / DX**2
    coeffs = [axis_coefficients(shape[a], r, np.asarray(lam) * dt / nd, faces[:, a, 0], faces[:, a, 1],
                                np.float64) for a in range(nd)]
    u = init.reshape(nf, *shape).copy()
    for k in range(n_steps):
        order = range(nd) if k % 2 == 0 or not alternate else range(nd - 1, -1, -1)
        if sinks is not None:
            u.reshape(nf, -1)[:, sinks[0]] += dt * sinks[1]
        for axis in order:
            flat = u.reshape(nf, -1)
            for f in range(nf):
                if not np.isnan(vv[f]):
                    flat[f, vessels] = vv[f]
            c = coeffs[axis]
            for f in range(nf):
                line = np.moveaxis(u[f], axis, 0).copy()
                n = line.shape[0]
                v = line.reshape(n, -1)
                if sinks is not None and (sinks[2][f] > 0).any():
                    e = np.zeros(u[f].size)
                    e[sinks[0]] = dt * sinks[2][f] / nd
                    e = np.moveaxis(e.reshape(shape), axis, 0).reshape(n, -1).copy()
                    if c.diffusing[f]:
                        thomas_sweep_sink_numpy(v, e, c.b[f], c.r[f], c.rhs_lo[f], c.rhs_hi[f])
                        v *= c.scale[f]
                    else:
                        v /= e + c.b[f][:, None]
                elif c.diffusing[f]:
                    thomas_sweep_numpy(v[None], c.cp[f:f + 1], c.rhs_lo[f:f + 1], c.rhs_hi[f:f + 1])
                    v *= c.scale[f]
                else:
                    v *= c.invb[f]
                u[f] = np.moveaxis(line, 0, axis)
    flat = u.reshape(nf, -1)
    for f in range(nf):
        if not np.isnan(vv[f]):
            flat[f, vessels] = vv[f]
    return u


@pytest.mark.parametrize("shape", [(7, 40, 300), (50, 900)])
def test_blocked_cpu_engine_equals_plain_reference(shape):
    """The pipelined, blocked CPU engine with its rotating layouts gives the same numbers
    as the plain canonical-array reference (checks block planning, layouts, the
    alternating axis order, vessels and the per-voxel uptake path)."""
    be = make_backend("numpy", "float64")
    nd = len(shape)
    rng = np.random.default_rng(3)
    init = rng.random((3, *shape))
    faces = np.full((3, nd, 2), NOFLUX)
    faces[0, nd - 1, 0] = 5.0
    faces[1, 0, 1] = 1.0
    vessels = rng.choice(np.prod(shape), 50, replace=False)
    vv = np.array([9.0, np.nan, 2.0])
    D, lam = [1e4, 50.0, 0.0], [0.1, 0.0, 0.3]
    s = DiffusionSolver(FieldGrid(shape, DX, D, lam, faces, vessels, vv), 2.0, initial=init, backend=be)
    sites = rng.choice(np.prod(shape), 400, replace=False)
    sec = rng.random((3, 400))
    upt = np.vstack([rng.random(400) * 5, np.zeros(400), rng.random(400)])
    s.step(n_steps=2)
    s.step(Sources(sites, sec, upt), n_steps=3)
    ref = _reference_steps(shape, D, lam, 2.0, init, faces, vessels, vv, 2)
    ref = _reference_steps(shape, D, lam, 2.0, ref, faces, vessels, vv, 3, sinks=(sites, sec, upt))
    np.testing.assert_allclose(host(s), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.backend.to_host(s.sample(sites)), ref.reshape(3, -1)[:, sites], rtol=1e-12)
    fixed_order = _reference_steps(shape, D, lam, 2.0, init, faces, vessels, vv, 5, alternate=False)
    assert not np.allclose(host(s), fixed_order)  # the check above is sensitive to the order


def test_sink_sweep_matches_dense_solve():
    """One line with per-voxel uptake on the diagonal equals numpy.linalg.solve."""
    n, r, kappa = 11, 2.5, 0.02
    c = axis_coefficients(n, np.array([r]), np.array([kappa]), np.array([3.0]), np.array([NOFLUX]), np.float64)
    rng = np.random.default_rng(2)
    extra = np.where(rng.random(n) < 0.5, rng.random(n) * 30, 0.0)
    A = np.diag(c.b[0] + extra) - r * np.eye(n, k=1) - r * np.eye(n, k=-1)
    d = rng.random(n)
    rhs = d.copy()
    rhs[0] += c.rhs_lo[0]
    v = d.reshape(n, 1).copy()
    thomas_sweep_sink_numpy(v, extra.reshape(n, 1).copy(), c.b[0], c.r[0], c.rhs_lo[0], c.rhs_hi[0])
    np.testing.assert_allclose(v[:, 0] * c.scale[0], np.linalg.solve(A, rhs), rtol=1e-12)


def test_uptake_steady_state_converges_at_long_field_steps(backend64):
    """Fixed value c at y=0, no flux at y=L, uptake U = 10/min by cells on every site:
    the steady state is c cosh((L-y)/l)/cosh(L/l) with l = sqrt(D/U) = 100 um.
    Uptake sits on the implicit diagonal with diffusion, so U*dt = 6 stays within 10%
    of c (the LOD splitting error) and U*dt = 1.5 within 3%. A pointwise uptake split
    from diffusion has the effective rate U/(1+U*dt): at U*dt = 6 a decay length 2.6x
    too long and errors above 30% of c."""
    xp = backend64.xp
    n = 60
    D, U, c0 = UPTAKE_COLUMN
    faces, exact = uptake_column(n)
    errs = []
    for dt in (0.6, 0.15):
        s = DiffusionSolver(FieldGrid((n, 1), DX, [D], [0.0], face_values=faces), dt, initial=c0, backend=backend64)
        src = Sources(xp.arange(n), xp.zeros((1, n)), xp.full((1, n), U))
        s.step(src, n_steps=round(120 / dt))
        errs.append(np.abs(host(s)[0, :, 0] - exact).max() / c0)
    assert errs[0] < 0.10 and errs[1] < 0.03 and errs[1] < errs[0] / 2, errs


@pytest.mark.slow
def test_steady_state_1d_with_decay_matches_cosh_profile(backend64):
    """Fixed value c at y=0, no flux at y=L, decay lambda: u = c cosh((L-y)/l)/cosh(L/l).

    The remaining error is the LOD splitting error of the steady state, O(lambda*dt)
    (the other axis's share of decay damps the face forcing), plus the O(dx^2) error of
    the discrete Laplacian (5e-4 here): shrinking dt 4x shrinks the error ~2x (the
    alternating axis order of the solver already cancels much of the splitting error)."""
    D, lam, c, n, dx = 1e4, 0.1, 1.0, 120, 20.0
    ell, L = np.sqrt(D / lam), n * dx
    y = (np.arange(n) + 0.5) * dx
    exact = c * np.cosh((L - y) / ell) / np.cosh(L / ell)
    errs = []
    for dt in (0.05, 0.0125):
        faces = np.full((1, 2, 2), NOFLUX)
        faces[0, 0, 0] = c
        s = DiffusionSolver(FieldGrid((n, 2), dx, [D], [lam], face_values=faces), dt, backend=backend64)
        s.step(n_steps=round(200 / dt))  # 200 min >> 1/lambda: steady
        errs.append(np.abs(host(s)[0, :, 0] - exact).max())
    assert errs[0] < 0.005 * c and errs[1] < 0.0015 * c, errs
    assert errs[1] < errs[0] / 1.5, errs  # the dt part of the error shrinks; dx sets a floor


def test_linear_profile_between_two_fixed_faces_is_exact(backend64):
    faces = np.full((1, 2, 2), NOFLUX)
    faces[0, 1, 0], faces[0, 1, 1] = 2.0, 10.0
    s = DiffusionSolver(FieldGrid((3, 40), DX, [1e5], [0.0], face_values=faces), 10.0, backend=backend64)
    s.step(n_steps=300)
    x = (np.arange(40) + 0.5) / 40
    np.testing.assert_allclose(host(s)[0, 1], 2.0 + 8.0 * x, rtol=1e-9)


@pytest.mark.parametrize("shape", [(101, 101), (45, 45, 45)])
def test_point_source_spreads_with_variance_2Dt_per_axis(backend64, shape):
    D, dt, steps = 1000.0, 0.5, 10 if len(shape) == 2 else 4
    init = np.zeros((1, *shape))
    centre = tuple(s // 2 for s in shape)
    init[(0, *centre)] = 1.0
    s = DiffusionSolver(FieldGrid(shape, DX, [D], [0.0]), dt, initial=init, backend=backend64)
    s.step(n_steps=steps)
    u = host(s)[0]
    t = dt * steps
    assert u.sum() == pytest.approx(1.0, rel=1e-12)
    for axis in range(len(shape)):
        x = (np.arange(shape[axis]) - centre[axis]) * DX
        marginal = u.sum(axis=tuple(a for a in range(len(shape)) if a != axis))
        var = (marginal * x**2).sum()
        # exact for backward Euler on an unbounded lattice; the faces (>= 6 sigma away)
        # reflect a little of the tail
        assert var == pytest.approx(2 * D * t, rel=1e-5)


def test_decay_only_follows_exponential_with_first_order_error(backend64):
    lam, t = 0.1, 10.0
    errs = []
    for dt in (0.01, 0.005):
        s = DiffusionSolver(FieldGrid((5, 5, 5), DX, [1e3, 0.0], [lam, lam]), dt, initial=3.0, backend=backend64)
        s.step(n_steps=round(t / dt))
        u = host(s)
        exact = 3.0 * np.exp(-lam * t)
        np.testing.assert_allclose(u, exact, rtol=2e-4)
        errs.append(abs(u[0].mean() - exact))
    assert 1.8 < errs[0] / errs[1] < 2.2  # first order in dt


def test_mass_is_conserved_with_no_flux_faces(backend64):
    rng = np.random.default_rng(7)
    init = rng.random((2, 30, 20, 25))
    s = DiffusionSolver(FieldGrid((30, 20, 25), DX, [1e5, 300.0], [0.0, 0.0]), 50.0, initial=init, backend=backend64)
    m0 = s.total_mass()
    s.step(n_steps=20)
    # Rounding perturbs matrix entries of size ~r by ~eps, so column sums drift by
    # ~r*eps per sweep: the float64 rounding bound is 20 steps * 3 sweeps * r * eps.
    r_max = 1e5 * 50.0 / DX**2
    bound = 20 * 3 * r_max * np.finfo(np.float64).eps
    assert np.abs(s.total_mass() / m0 - 1).max() < bound


def test_strong_uptake_never_makes_values_negative(backend64):
    xp = backend64.xp
    shape = (30, 30)
    s = DiffusionSolver(FieldGrid(shape, DX, [1e5], [0.0]), 10.0, initial=38.0, backend=backend64)
    sites = np.arange(0, 900, 7)
    src = Sources(xp.asarray(sites), xp.zeros((1, len(sites))), xp.full((1, len(sites)), 1e6))
    masses = [s.total_mass()[0]]
    for _ in range(20):
        s.step(src)
        u = host(s)
        assert (u >= 0).all()
        masses.append(s.total_mass()[0])
    assert np.all(np.diff(masses) < 0)  # consumed every step, never below zero
    assert masses[-1] < 0.1 * masses[0]


def test_stable_far_beyond_explicit_limit(backend64):
    """dt = 1000x the explicit limit: bounded by the initial extremes (maximum principle)."""
    D = 1e5
    dt = 1000 * DX**2 / (2 * 3 * D)
    rng = np.random.default_rng(11)
    init = rng.random((1, 16, 16, 16)) * 10
    s = DiffusionSolver(FieldGrid((16, 16, 16), DX, [D], [0.01]), dt, initial=init, backend=backend64)
    for _ in range(10):
        s.step()
        u = host(s)
        assert np.isfinite(u).all()
        assert u.min() >= -1e-12 and u.max() <= init.max()
    assert u.std() < init.std() * 1e-2


@pytest.mark.slow
def test_observed_convergence_order_in_dt_is_one(backend64):
    """Errors against a fine-dt reference fall by ~2x per halving of dt (backward Euler)."""
    shape, T = (40, 30), 8.0
    faces = np.full((1, 2, 2), NOFLUX)  # data compatible with the boundary: no order reduction
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    init = (50.0 * np.exp(-((yy - 20) ** 2 + (xx - 15) ** 2) / 50.0))[None]  # smooth data

    def solve(dt):
        s = DiffusionSolver(FieldGrid(shape, DX, [2000.0], [0.05], face_values=faces), dt, initial=init,
                            backend=backend64)
        s.step(n_steps=round(T / dt))
        return host(s)[0]

    ref = solve(T / 4096)
    dts = [T / 32, T / 64, T / 128]
    errs = [np.abs(solve(dt) - ref).max() for dt in dts]
    order = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert 0.85 < order < 1.15, (errs, order)


def test_vessel_sites_hold_their_value(backend64):
    shape = (20, 20)
    sites = np.array([5, 77, 250])
    s = DiffusionSolver(FieldGrid(shape, DX, [1e5, 1e3], [0.1, 0.1], vessel_sites=sites, vessel_values=[38.0, np.nan]),
                        1.0, initial=0.0, backend=backend64)
    s.step(n_steps=5)
    u = host(s).reshape(2, -1)
    np.testing.assert_allclose(u[0, sites], 38.0)
    assert u[0].mean() > 1.0  # the vessels fed the lattice
    np.testing.assert_allclose(u[1], 0.0)  # the second field is not fixed by vessels


def test_float32_tracks_float64():
    init = np.random.default_rng(5).random((2, 24, 24, 24))
    out = []
    for dt in ("float32", "float64"):
        s = DiffusionSolver(FieldGrid((24, 24, 24), DX, [1e5, 555.0], [0.1, 0.01]), 6.0, initial=init,
                            backend=make_backend("numpy", dt))
        s.step(n_steps=5)
        out.append(host(s).astype(np.float64))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shape"):
        DiffusionSolver(FieldGrid((5,), DX, [1.0], [0.0]), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        DiffusionSolver(FieldGrid((5, 5), DX, [-1.0], [0.0]), 1.0)
    with pytest.raises(ValueError, match="dt_min"):
        DiffusionSolver(FieldGrid((5, 5), DX, [1.0], [0.0]), 0.0)
