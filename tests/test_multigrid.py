"""The multigrid schemes (steady, implicit) against closed forms, a sparse direct
solve, the LOD step in its small-step limit, and conservation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
from helpers import DX, UPTAKE_COLUMN, host, uptake_column
from scipy.special import i0, i1, k0, k1

from tme_abm.config import ConfigError, load_config
from tme_abm.engine.backend import make_backend
from tme_abm.engine.diffusion import NOFLUX, DiffusionSolver, FieldGrid, Sources
from tme_abm.engine.diffusion.multigrid import MultigridSolver


def _cells_everywhere(xp, n_sites, uptake, secretion=0.0):
    return Sources(xp.arange(n_sites), xp.full((1, n_sites), secretion), xp.full((1, n_sites), uptake))


def test_steady_1d_uptake_matches_cosh_and_error_falls_with_tolerance(backend64):
    """Fixed value c at y=0, no flux at y=L, uptake U by cells on every site:
    u = c cosh((L-y)/l)/cosh(L/l), l = sqrt(D/U). At U*dt = 120 the LOD step errs by
    ~12% of c; the steady solve is exact up to the O(dx^2) Laplacian and its tolerance."""
    xp = backend64.xp
    n = 300
    D, U, c0 = UPTAKE_COLUMN
    faces, exact = uptake_column(n)
    errs = []
    for tol in (1e-2, 1e-4, 1e-8):
        s = DiffusionSolver(FieldGrid((n, 1), DX, [D], [0.0], face_values=faces), 12.0, initial=c0, backend=backend64,
                            schemes=["steady"], tolerance=tol)
        s.step(_cells_everywhere(xp, n, U))
        errs.append(np.abs(host(s)[0, :, 0] - exact).max() / c0)
    assert errs[2] < 0.01, errs  # the discrete Laplacian's error (l = 5 voxels)
    assert errs[0] > errs[1] >= errs[2] * 0.999, errs


def _disk_exact(r, R, D, U_in, lam_out, u_far):
    """Steady u of D lap u = U_in u inside r < R and D lap u = lam_out (u - u_far)
    outside, u bounded: A I0(r/a) inside, u_far + B K0(r/b) outside, value and flux
    continuous at R."""
    a, b = np.sqrt(D / U_in), np.sqrt(D / lam_out)
    # A I0(R/a) = u_far + B K0(R/b);  A I1(R/a)/a = -B K1(R/b)/b
    m = np.array([[i0(R / a), -k0(R / b)], [i1(R / a) / a, k1(R / b) / b]])
    A, B = np.linalg.solve(m, [u_far, 0.0])
    return np.where(r < R, A * i0(r / a), u_far + B * k0(np.maximum(r, 1e-9) / b))


def test_steady_disk_lesion_matches_bessel_solution(backend64):
    """A 2D disk of radius R of cells taking the field up (U), surrounded by cells that
    supply it (secretion s, uptake lam: far value s/lam): the closed form in modified
    Bessel functions. The staircase edge of the disk sets an O(dx) floor; the error
    falls with the tolerance down to it."""
    xp = backend64.xp
    n, dx, D, R = 160, 10.0, 1e4, 300.0
    U_in, lam, u_far = 1.0, 0.5, 10.0
    c = (np.arange(n) + 0.5 - n / 2) * dx
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    inside = (r < R).ravel()
    sites = np.arange(n * n)
    upt = np.where(inside, U_in, lam)[None]
    sec = np.where(inside, 0.0, lam * u_far)[None]
    exact = _disk_exact(r, R, D, U_in, lam, u_far)
    errs = []
    for tol in (1e-2, 1e-6):
        s = DiffusionSolver(FieldGrid((n, n), dx, [D], [0.0], face_values=np.full((1, 2, 2), u_far)), 12.0,
                            initial=u_far, backend=backend64, schemes=["steady"], tolerance=tol)
        s.step(Sources(xp.asarray(sites), xp.asarray(sec), xp.asarray(upt)))
        errs.append(np.abs(host(s)[0] - exact).max() / u_far)
    assert errs[1] < 0.02, errs
    assert errs[0] > errs[1], errs


def _direct(shape, D, lam, faces, fixed, value, U, S):
    """The same discretisation assembled as a sparse matrix and solved directly."""
    nd, N, k = len(shape), int(np.prod(shape)), D / DX**2
    idx = np.arange(N).reshape(shape)
    diag, b = lam + U.ravel().copy(), S.ravel().copy()
    rows, cols = [], []
    for a in range(nd):
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        i, j = idx[tuple(lo)].ravel(), idx[tuple(hi)].ravel()
        rows += [i, j]
        cols += [j, i]
        np.add.at(diag, i, k)
        np.add.at(diag, j, k)
        for side, pos in ((0, 0), (1, -1)):
            g = faces[a, side]
            if not np.isnan(g):
                face = [slice(None)] * nd
                face[a] = pos
                f_idx = idx[tuple(face)].ravel()
                np.add.at(diag, f_idx, 2 * k)
                np.add.at(b, f_idx, 2 * k * g)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    A = (sp.coo_matrix((np.full(len(rows), -k), (rows, cols)), shape=(N, N)) + sp.diags(diag)).tolil()
    for i in np.flatnonzero(fixed.ravel()):
        A.rows[i], A.data[i] = [i], [1.0]
        b[i] = value
    return spl.spsolve(A.tocsr(), b).reshape(shape)


@pytest.mark.parametrize("shape", [(37, 50), (12, 15, 17)])
def test_steady_matches_sparse_direct_solve_with_vessels_and_cells(backend64, shape):
    """Random vessels, Dirichlet faces on one axis, uptake and secretion by random cells,
    odd lattice sizes: the multigrid solve equals the sparse direct solve to well
    below the tolerance's scale, and is never negative."""
    xp = backend64.xp
    rng = np.random.default_rng(3)
    N = int(np.prod(shape))
    fixed = rng.random(N) < 0.02
    sites = np.flatnonzero(~fixed & (rng.random(N) < 0.4))
    U, S = np.zeros(N), np.zeros(N)
    U[sites] = rng.uniform(0, 20, len(sites))
    S[sites] = rng.uniform(0, 1, len(sites))
    faces = np.full((len(shape), 2), NOFLUX)
    faces[0] = (38.0, 5.0)
    grid = FieldGrid(shape, DX, [1e5], [0.1], face_values=faces[None], vessel_sites=np.flatnonzero(fixed),
                     vessel_values=[38.0])
    s = DiffusionSolver(grid, 12.0, initial=1.0, backend=backend64, schemes=["steady"], tolerance=1e-10)
    s.step(Sources(xp.asarray(sites), xp.asarray(S[sites][None]), xp.asarray(U[sites][None])))
    ref = _direct(shape, 1e5, 0.1, faces, fixed.reshape(shape), 38.0, U.reshape(shape), S.reshape(shape))
    got = host(s)[0]
    assert np.abs(got - ref).max() < 1e-6 * 38
    assert got.min() >= 0


def test_extreme_uptake_stays_non_negative(backend64):
    """Uptake of 1e6/min next to a vessel: the field near the consumers is ~0, never below."""
    xp = backend64.xp
    shape = (40, 40)
    sites = np.arange(0, 1600, 3)
    grid = FieldGrid(shape, DX, [1e5], [0.1], np.full((1, 2, 2), 38.0), vessel_sites=[1], vessel_values=[38.0])
    s = DiffusionSolver(grid, 12.0, initial=38.0, backend=backend64, schemes=["steady"])
    s.step(Sources(xp.asarray(sites), xp.zeros((1, len(sites))), xp.full((1, len(sites)), 1e6)))
    v = host(s)[0]
    assert v.min() >= 0 and v.ravel()[1] == 38.0
    assert np.median(v.ravel()[sites]) < 1.0


@pytest.mark.slow
def test_lod_holds_vessels_only_to_first_order_and_implicit_exactly(backend64):
    """Vessel voxels as the only sources (no-flux faces, decay): the LOD step resets them
    between sweeps, so their supply errs by O(D dt / dx^2); its result approaches the
    steady solve as dt shrinks (error ~10x smaller per 10x smaller dt), while backward
    Euler (implicit) has the steady solve as its exact steady state at any dt."""
    rng = np.random.default_rng(0)
    shape = (30, 30)
    vessels = np.flatnonzero(rng.random(900) < 0.01)
    grid = FieldGrid(shape, DX, [1e4], [0.1], vessel_sites=vessels, vessel_values=[38.0])
    kw = dict(initial=20.0, backend=backend64)
    steady = DiffusionSolver(grid, 12.0, schemes=["steady"], tolerance=1e-10, **kw)
    steady.step()
    errs = []
    for dt in (0.1, 0.01):
        lod = DiffusionSolver(grid, dt, **kw)
        lod.step(n_steps=round(150 / dt))
        errs.append(np.abs(host(lod) - host(steady)).max())
    implicit = DiffusionSolver(grid, 12.0, schemes=["implicit"], tolerance=1e-10, **kw)
    implicit.step(n_steps=20)
    assert errs[0] > 1.0 and 5 < errs[0] / errs[1] < 20, errs
    assert np.abs(host(implicit) - host(steady)).max() < 1e-6 * 38


def test_implicit_conserves_mass_and_matches_lod_in_1d(backend64):
    """No decay, no-flux faces, no vessels: backward Euler keeps the total up to its
    tolerance. In 1D there is no splitting, so one implicit step equals one LOD step."""
    xp = backend64.xp
    rng = np.random.default_rng(1)
    init = rng.random((1, 64, 48))
    s = DiffusionSolver(FieldGrid((64, 48), DX, [1e4], [0.0]), 12.0, initial=init, backend=backend64,
                        schemes=["implicit"], tolerance=1e-10)
    before = s.total_mass()
    s.step(n_steps=5)
    assert abs(s.total_mass()[0] - before[0]) < 1e-8 * before[0]
    line = rng.random((1, 80, 1))
    a = DiffusionSolver(FieldGrid((80, 1), DX, [1e4], [0.0]), 6.0, initial=line, backend=backend64,
                        schemes=["implicit"], tolerance=1e-12)
    b = DiffusionSolver(FieldGrid((80, 1), DX, [1e4], [0.0]), 6.0, initial=line, backend=backend64)
    a.step(Sources(xp.arange(5), xp.ones((1, 5)), xp.zeros((1, 5))))
    b.step(Sources(xp.arange(5), xp.ones((1, 5)), xp.zeros((1, 5))))
    np.testing.assert_allclose(host(a), host(b), rtol=1e-9)


def test_schemes_are_mixed_in_one_solver_and_checkpoint_exactly(backend64):
    """Three fields, one per scheme: values, sample and field() agree; get_state and
    set_state continue bit for bit (the steady field's warm start included)."""
    xp = backend64.xp
    rng = np.random.default_rng(2)
    shape = (24, 30)
    sites = xp.asarray(rng.choice(720, 200, replace=False))
    src = Sources(sites, xp.asarray(rng.random((3, 200))), xp.asarray(rng.random((3, 200)) * 5))
    grid = FieldGrid(shape, DX, [1e5, 1e3, 1e3], [0.1, 0.01, 0.0], np.full((3, 2, 2), 1.0), [5, 400],
                     [2.0, 2.0, np.nan])
    kw = dict(backend=backend64, schemes=["steady", "lod", "implicit"], initial=[1.0, 0.5, 0.2])
    a = DiffusionSolver(grid, 6.0, **kw)
    a.step(src, 2)
    state = a.get_state()
    b = DiffusionSolver(grid, 6.0, **kw)
    b.set_state([state[0]], state[1])
    a.step(src, 3)
    b.step(src, 3)
    np.testing.assert_array_equal(host(a), host(b))
    for f in range(3):
        np.testing.assert_array_equal(backend64.to_host(a.field(f))[0], host(a)[f])
        np.testing.assert_array_equal(backend64.to_host(a.sample(sites, f)),
                                      host(a)[f].ravel()[backend64.to_host(sites)])
    assert host(a)[0].ravel()[5] == 2.0 and host(a)[2].ravel()[400] != 2.0


def test_sources_of_every_site_are_copied_to_the_same_solve(backend64):
    """Sources marked ``every_site`` (a perfused field's: every site, in order) are copied
    instead of scattered, and the fields of every scheme come out the same as from the same
    sources scattered site by site."""
    xp = backend64.xp
    rng = np.random.default_rng(5)
    shape = (24, 30)
    sec, upt = rng.random((3, 720)), rng.random((3, 720)) * 5
    grid = FieldGrid(shape, DX, [1e5, 1e3, 1e3], [0.1, 0.01, 0.0], np.full((3, 2, 2), 1.0), [5, 400],
                     [2.0, 2.0, np.nan])
    kw = dict(backend=backend64, schemes=["steady", "lod", "implicit"], initial=[1.0, 0.5, 0.2])
    copied, scattered = DiffusionSolver(grid, 6.0, **kw), DiffusionSolver(grid, 6.0, **kw)
    sites = xp.arange(720)
    copied.step(Sources(sites, xp.asarray(sec), xp.asarray(upt), every_site=True), 2)
    scattered.step(Sources(sites, xp.asarray(sec), xp.asarray(upt)), 2)
    assert np.abs(host(copied)[0] - 1.0).max() > 0.1  # the sources did act
    np.testing.assert_array_equal(host(copied), host(scattered))


def test_auto_scheme_follows_relaxation_and_bad_schemes_are_refused():
    cfg = load_config("configs/baseline.yaml")
    schemes = cfg.field_schemes
    assert schemes["oxygen"] == schemes["adenosine"] == schemes["protons"] == "steady"
    assert schemes["cxcl10"] == schemes["cytokine"] == "implicit"  # decay 0.01-0.016/min: too slow for steady
    assert load_config("configs/baseline.yaml", ["fields.cxcl10.diffusion_um2_per_min=0"]).field_schemes[
        "cxcl10"] == "lod"  # a field that does not diffuse
    slow = load_config("configs/baseline.yaml", ["lattice.vessels.density=0.0001", "time.fields_every_ticks=1",
                                                 "fields.protons.boundary.default.kind=noflux"])
    assert slow.field_schemes["protons"] == "implicit"  # held by vessels 2 mm apart: too slow for steady
    forced = load_config("configs/baseline.yaml", ["fields.oxygen.scheme=lod"])
    assert forced.field_schemes["oxygen"] == "lod"
    with pytest.raises(ConfigError, match="fields.cxcl10.scheme: steady, but the field has no steady state"):
        load_config("configs/baseline.yaml", ["fields.cxcl10.scheme=steady", "fields.cxcl10.decay_per_min=0"])


@pytest.mark.parametrize("shape", [(100, 100), (37, 50), (1, 40), (20, 24, 18), (9, 1, 7)])
@pytest.mark.parametrize("implicit", [False, True])
def test_the_compiled_solve_equals_its_array_twin(shape, implicit):
    """The compiled CPU solve (engine/diffusion/fused.py) and the array code (the CuPy path,
    and its NumPy twin) take the same iterations per slab and agree to rounding, with
    vessels, fixed and no-flux faces, cells taking up and secreting, several fields and
    replicates, float32 fields, and slabs that start converged."""
    be = make_backend("numpy", "float64")
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    nd = len(shape)
    faces = np.full((3, nd, 2), NOFLUX)
    faces[0] = 46.0
    faces[1, 0, 0] = 0.05
    grid = FieldGrid(shape, DX, [1e5, 1e4, 555.0], [0.1, 0.2, 0.0], faces, rng.choice(n, max(1, n // 100),
                     replace=False), [46.0, 0.05, np.nan], replicates=2)
    solvers = [MultigridSolver(grid, be, tol=1e-6, check_every=1, fused=f) for f in (True, False)]
    assert solvers[0].fused is not None and solvers[1].fused is None
    cells = rng.random((6, *shape)) < 0.2
    uptake, secretion = np.where(cells, 10.0, 0.0), np.where(cells, 3.0, 0.0)
    inv_dt = np.full((6,) + (1,) * nd, 1 / 12.0) if implicit else None
    start = (rng.random((6, *shape)) * 40).astype(np.float32)
    results = []
    for s in solvers:
        u = start.copy()
        s.solve(u, uptake, secretion, inv_dt)
        results.append(u)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6)  # float32 fields
    u64 = [start.astype(np.float64) for _ in solvers]
    for s, u in zip(solvers, u64):
        s.solve(u, uptake, secretion, inv_dt)
        if not implicit:  # warm-started at its steady state, a solve is done at once
            assert s.solve(u.copy(), uptake, secretion, inv_dt) == 0
    assert solvers[0].iterations == solvers[1].iterations
    np.testing.assert_allclose(u64[0], u64[1], rtol=1e-12, atol=1e-12 * 46)


@pytest.mark.parametrize("fused", [True, False])
def test_a_solve_of_some_slabs_leaves_the_others_and_solves_each_as_alone(fused):
    """``slabs`` solves only the named (field, replicate) slabs: the others keep their
    values, and each solved one comes out as a solve of its field alone."""
    be = make_backend("numpy", "float64")
    rng = np.random.default_rng(3)
    shape, n = (24, 30), 24 * 30
    grid = FieldGrid(shape, DX, [1e4, 555.0], [0.2, 0.01], np.full((2, 2, 2), 1.0), rng.choice(n, 6, replace=False),
                     [2.0, np.nan])
    cells = rng.random((2, *shape)) < 0.2
    uptake, secretion = np.where(cells, 5.0, 0.0), np.where(cells, 3.0, 0.0)
    inv_dt = np.full((2, 1, 1), 1 / 6.0)
    start = rng.random((2, *shape)) * 3
    both = MultigridSolver(grid, be, tol=1e-8, fused=fused)
    u = start.copy()
    both.solve(u, uptake, secretion, inv_dt, slabs=np.array([False, True]))
    assert np.array_equal(u[0], start[0])
    alone = MultigridSolver(grid.subset([1]), be, tol=1e-8, fused=fused)
    v = start[1:].copy()
    alone.solve(v, uptake[1:], secretion[1:], inv_dt[1:])
    np.testing.assert_allclose(u[1], v[0], rtol=1e-13, atol=1e-13)


def test_an_implicit_field_with_substeps_takes_its_own_shorter_steps():
    """A field with ``substeps`` k in a set steps exactly as that field alone over k steps
    of dt / k; the steady and single-step fields beside it are untouched by it."""
    be = make_backend("numpy", "float64")
    rng = np.random.default_rng(5)
    shape, n = (20, 26), 20 * 26
    grid = FieldGrid(shape, DX, [1e5, 1000.0, 2000.0], [0.1, 0.016, 0.05], np.full((3, 2, 2), NOFLUX),
                     rng.choice(n, 5, replace=False), [46.0, np.nan, np.nan])
    sites = np.flatnonzero(rng.random(n) < 0.3)
    src = Sources(sites, rng.random((3, len(sites))), rng.random((3, len(sites))) * 0.5)
    schemes, dt = ["steady", "implicit", "implicit"], 12.0
    mixed = DiffusionSolver(grid, dt, initial=[46.0, 0.1, 0.2], backend=be, schemes=schemes, substeps=[1, 3, 1])
    mixed.step(src)
    mixed.step(src)
    for f, k in enumerate([1, 3, 1]):
        alone = DiffusionSolver(grid.subset([f]), dt / k, initial=[[46.0, 0.1, 0.2][f]], backend=be,
                                schemes=[schemes[f]])
        one = Sources(sites, src.secretion[f:f + 1], src.uptake[f:f + 1])
        alone.step(one, n_steps=k)
        alone.step(one, n_steps=k)
        assert np.array_equal(mixed.field(f), alone.field(0)), f
    with pytest.raises(ValueError, match="substeps"):
        DiffusionSolver(grid, dt, backend=be, schemes=schemes, substeps=[1, 0, 1])
