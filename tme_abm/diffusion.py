"""Implicit locally-one-dimensional (LOD) reaction-diffusion solver for many fields.

Each field ``u`` (F of them, on a regular 2D or 3D lattice with spacing ``dx``) obeys

    du/dt = D * laplacian(u) - lambda * u - U(x) * u + S(x)

with fixed-value (Dirichlet) voxels at vessels and, on each domain face, either a
fixed face value or no flux. One step of length ``dt``:

1. cell sources, pointwise and implicit: ``u <- (u + dt*S) / (1 + dt*U)`` (never negative);
2. for each axis a, backward Euler in that axis only (LOD splitting, as BioFVM):
   ``(1 + dt*lambda/ndim) u_i - r (u_{i-1} - 2 u_i + u_{i+1}) = rhs_i`` with ``r = D*dt/dx^2``,
   solved along every line by the Thomas algorithm with coefficients precomputed per dt;
   vessel voxels are reset to their value before each axis sweep and at the end.

Every line solve is unconditionally stable and keeps concentrations non-negative
(the matrices are M-matrices). With no decay and no-flux faces, mass is conserved
exactly up to rounding (each column of the matrix sums to one).

Faces: a fixed face value ``c`` uses the ghost value ``2c - u_0`` so that ``u = c``
holds on the face itself (half a voxel outside the first voxel centre), which is
second-order accurate in space.

Algorithm layout (identical on CPU and GPU, so each CUDA kernel has a NumPy twin):
the field buffer always sweeps its *leading* spatial axis, which makes every line
operation a contiguous plane operation (CPU) or a coalesced load (GPU, one thread per
line). After the sweep the buffer is written transposed into a second buffer so the
next axis leads: ``(F, A0, A1, A2) -> (F, A1, A2, A0)``; after ``ndim`` sweeps the
layout is canonical again. Kernels: ``lod_sweep`` (Thomas along the leading axis of
``(F, n, W)``, all fields in one launch) and ``lod_rotate`` (``(F, n, W) -> (F, W, n)``,
tiled transpose with a per-field scale); NumPy twins: :func:`thomas_sweep_numpy` and
:func:`rotate_numpy`.

The Thomas recurrence is written in a scaled form that needs two array operations
per plane and pass instead of three: with ``cp_i = r / denom_i`` the forward pass is
``g_i = cp_i (d_i + g_{i-1})`` and the backward pass ``h_i = g_i + cp_i h_{i+1}``; then
``u = h / r``. The ``1/r`` is folded into the transposing copy. (Fields with D = 0 are
not diffusing and use ``u <- u / b`` instead.)
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .backend import Backend, make_backend

NOFLUX = math.nan
"""Face value meaning "no-flux" in ``face_values``."""

# Plane size (elements) a CPU block aims for: large enough that NumPy's per-call
# overhead is small, small enough that a block stays in the last-level cache.
_CPU_TARGET_PLANE = 40_000


@dataclass(frozen=True)
class Sources:
    """Per-cell secretion and uptake, applied implicitly at the cells' sites.

    Attributes:
        sites: (k,) int flat indices into the lattice (C order), one cell per site.
        secretion: (F, k) secretion rates, field units per minute.
        uptake: (F, k) uptake rates, 1/minute (first-order consumption).
    """

    sites: object
    secretion: object
    uptake: object


@dataclass(frozen=True)
class _AxisCoefficients:
    """Precomputed Thomas coefficients for one axis and one dt (host and device copies)."""

    cp: np.ndarray  # (F, n) r/denom_i (diffusing fields); unused rows for others
    rhs_lo: np.ndarray  # (F,) 2*r*c for a fixed low face, else 0
    rhs_hi: np.ndarray  # (F,) 2*r*c for a fixed high face, else 0
    invb: np.ndarray  # (F,) 1/(1 + dt*lambda/ndim) for non-diffusing fields
    scale: np.ndarray  # (F,) 1/r for diffusing fields, 1 otherwise
    diffusing: np.ndarray  # (F,) int32, 1 where D > 0


def axis_coefficients(
    n: int,
    r: np.ndarray,
    kappa: np.ndarray,
    face_lo: np.ndarray,
    face_hi: np.ndarray,
    dtype,
) -> _AxisCoefficients:
    """Thomas coefficients for lines of length ``n``, per field (computed in float64).

    Args:
        n: number of voxels along the axis.
        r: (F,) D*dt/dx^2, dimensionless.
        kappa: (F,) decay per axis sweep, lambda*dt/ndim, dimensionless.
        face_lo, face_hi: (F,) fixed face values, NaN for no-flux.
        dtype: dtype of the returned arrays.
    """
    nf = len(r)
    cp = np.zeros((nf, n))
    rhs_lo = np.zeros(nf)
    rhs_hi = np.zeros(nf)
    for f in range(nf):
        rf = float(r[f])
        lo_fixed = not math.isnan(face_lo[f])
        hi_fixed = not math.isnan(face_hi[f])
        b = np.full(n, 1.0 + kappa[f] + 2.0 * rf)
        if n == 1:
            b[0] = 1.0 + kappa[f] + 2.0 * rf * (lo_fixed + hi_fixed)
        else:
            b[0] = 1.0 + kappa[f] + rf + (2.0 * rf if lo_fixed else 0.0)
            b[-1] = 1.0 + kappa[f] + rf + (2.0 * rf if hi_fixed else 0.0)
        if rf > 0:
            denom = b[0]
            cp[f, 0] = rf / denom
            for i in range(1, n):
                denom = b[i] - rf * cp[f, i - 1]
                cp[f, i] = rf / denom
            rhs_lo[f] = 2.0 * rf * face_lo[f] if lo_fixed else 0.0
            rhs_hi[f] = 2.0 * rf * face_hi[f] if hi_fixed else 0.0
    diffusing = (np.asarray(r) > 0).astype(np.int32)
    scale = np.where(diffusing == 1, 1.0 / np.where(r > 0, r, 1.0), 1.0)
    invb = 1.0 / (1.0 + np.asarray(kappa, dtype=float))
    return _AxisCoefficients(
        cp=cp.astype(dtype),
        rhs_lo=rhs_lo.astype(dtype),
        rhs_hi=rhs_hi.astype(dtype),
        invb=invb.astype(dtype),
        scale=scale.astype(dtype),
        diffusing=diffusing,
    )


# --------------------------------------------------------------------------------------
# NumPy twins of kernels/lod.cu (also the CPU engine's building blocks)
# --------------------------------------------------------------------------------------


def thomas_sweep_numpy(v, cp, rhs_lo, rhs_hi) -> None:
    """Scaled Thomas solve along axis 1 of ``v``, in place; twin of ``lod_sweep``.

    Args:
        v: (fg, n, w) array view of diffusing fields; on return it holds ``r * u_new``.
        cp: (fg, n) coefficients ``r / denom_i``.
        rhs_lo, rhs_hi: (fg,) face terms added to the first and last plane.
    """
    xp = np if isinstance(v, np.ndarray) else _array_module(v)
    n = v.shape[1]
    planes = [v[:, i, :] for i in range(n)]
    cps = xp.ascontiguousarray(cp.T)[:, :, None]  # (n, fg, 1)
    planes[0] += rhs_lo[:, None]
    planes[-1] += rhs_hi[:, None]
    planes[0] *= cps[0]
    for i in range(1, n):
        planes[i] += planes[i - 1]
        planes[i] *= cps[i]
    tmp = xp.empty_like(planes[0])
    for i in range(n - 2, -1, -1):
        xp.multiply(planes[i + 1], cps[i], out=tmp)
        planes[i] += tmp


def rotate_numpy(src, dst, scale) -> None:
    """``dst[f, w, i] = src[f, i, w] * scale[f]``; twin of ``lod_rotate``.

    Args:
        src: (fg, n, w) array view.
        dst: (fg, w, n) array view, written.
        scale: (fg,) per-field factor.
    """
    xp = np if isinstance(src, np.ndarray) else _array_module(src)
    xp.multiply(src.transpose(0, 2, 1), scale[:, None, None], out=dst)


def _array_module(a):
    try:
        import cupy  # noqa: PLC0415 - only reached for CuPy arrays, which imply CuPy

        return cupy.get_array_module(a)
    except ImportError:  # pragma: no cover
        return np


# --------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------


class DiffusionSolver:
    """Implicit LOD reaction-diffusion of F fields on a 2D or 3D lattice.

    Args:
        shape: lattice shape, 2 or 3 ints (voxels), C order (z, y, x) / (y, x).
        spacing_um: voxel edge length, micrometres.
        diffusion_um2_per_min: (F,) diffusion coefficients, um^2/min (>= 0).
        decay_per_min: (F,) first-order decay rates, 1/min (>= 0).
        dt_min: field time step, minutes.
        face_values: (F, ndim, 2) fixed value on the low/high face of each axis,
            NaN (:data:`NOFLUX`) for a no-flux face. Default: all no-flux.
        vessel_sites: (k,) flat indices of fixed-value voxels (vessels).
        vessel_values: (F,) value each field is held at on vessel voxels, NaN where
            a field is not fixed by vessels.
        initial: scalar or (F,) initial value, or (F, *shape) initial field.
        backend: a :class:`~tme_abm.backend.Backend`; default NumPy float64.

    The current fields are :attr:`values`, an (F, *shape) array on the backend's device.
    """

    def __init__(
        self,
        shape: Sequence[int],
        spacing_um: float,
        diffusion_um2_per_min,
        decay_per_min,
        dt_min: float,
        *,
        face_values=None,
        vessel_sites=None,
        vessel_values=None,
        initial=0.0,
        backend: Backend | None = None,
    ):
        self.backend = backend or make_backend("numpy", "float64")
        xp = self.backend.xp
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ValueError(f"shape must be 2 or 3 positive ints, got {shape}")
        self.ndim = len(self.shape)
        self.spacing_um = float(spacing_um)
        if not self.spacing_um > 0:
            raise ValueError(f"spacing_um must be > 0, got {spacing_um}")
        self.diffusion = np.atleast_1d(np.asarray(diffusion_um2_per_min, dtype=float))
        self.decay = np.atleast_1d(np.asarray(decay_per_min, dtype=float))
        self.n_fields = len(self.diffusion)
        if self.decay.shape != (self.n_fields,):
            raise ValueError("decay_per_min must have one entry per field")
        if (self.diffusion < 0).any() or (self.decay < 0).any():
            raise ValueError("diffusion and decay must be >= 0")
        nf, nd = self.n_fields, self.ndim
        faces = np.full((nf, nd, 2), NOFLUX) if face_values is None else np.array(face_values, float)
        if faces.shape != (nf, nd, 2):
            raise ValueError(f"face_values must have shape {(nf, nd, 2)}, got {faces.shape}")
        self.face_values = faces
        self.dtype = self.backend.dtype
        self.n_sites = int(np.prod(self.shape))

        # Two buffers: sweeps write their transposed result into the other one.
        self._buf = [xp.empty((nf, self.n_sites), dtype=self.dtype) for _ in range(2)]
        self._cur = 0
        init = np.asarray(initial, dtype=float)
        if init.ndim == 0 or init.shape == (nf,):
            self._buf[0][...] = xp.asarray(np.broadcast_to(init.reshape(-1, 1), (nf, 1)), self.dtype)
        else:
            self._buf[0][...] = xp.asarray(init.reshape(nf, self.n_sites), self.dtype)

        # Vessel voxels: one flat-index array per layout the buffer passes through.
        self._vessel_fields = np.zeros(0, dtype=np.int64)
        self._vessel_index: list = []
        self._vessel_vals = None
        if vessel_sites is not None and len(vessel_sites) > 0:
            vals = np.asarray(vessel_values, dtype=float)
            if vals.shape != (nf,):
                raise ValueError("vessel_values must have one entry per field (NaN = not fixed)")
            fixed = np.flatnonzero(~np.isnan(vals))
            if len(fixed):
                sites = np.asarray(vessel_sites, dtype=np.int64)
                coords = np.unravel_index(sites, self.shape)
                for layout in range(nd):
                    perm = self._layout_axes(layout)
                    idx = np.ravel_multi_index(tuple(coords[a] for a in perm), tuple(self.shape[a] for a in perm))
                    self._vessel_index.append(xp.asarray(idx))
                self._vessel_fields = fixed
                self._vessel_vals = xp.asarray(vals[fixed][:, None], self.dtype)
        self._apply_vessels(0, self._buf[0], range(nf))

        self._dt = None
        self._coeffs: list[_AxisCoefficients] = []
        self._dev_coeffs: list = []
        self._pool: ThreadPoolExecutor | None = None
        self.set_dt(dt_min)

    # ---- public API ------------------------------------------------------------------

    @property
    def values(self):
        """Current fields, (F, *shape) array on the backend's device (a view; writable)."""
        return self._buf[self._cur].reshape((self.n_fields, *self.shape))

    @property
    def dt_min(self) -> float:
        return self._dt

    def set_dt(self, dt_min: float) -> None:
        """Precompute the Thomas coefficients for a new field step (minutes)."""
        dt = float(dt_min)
        if not dt > 0:
            raise ValueError(f"dt_min must be > 0, got {dt_min}")
        if dt == self._dt:
            return
        r = self.diffusion * dt / self.spacing_um**2
        kappa = self.decay * dt / self.ndim
        self._coeffs = [
            axis_coefficients(
                self.shape[a], r, kappa, self.face_values[:, a, 0], self.face_values[:, a, 1], self.dtype
            )
            for a in range(self.ndim)
        ]
        if self.backend.is_gpu:
            xp = self.backend.xp
            self._dev_coeffs = [
                {k: xp.asarray(getattr(c, k)) for k in ("cp", "rhs_lo", "rhs_hi", "invb", "scale", "diffusing")}
                for c in self._coeffs
            ]
        self._blocks = [self._plan_blocks(a) for a in range(self.ndim)]
        self._dt = dt

    def step(self, sources: Sources | None = None, n_steps: int = 1) -> None:
        """Advance all fields by ``n_steps * dt_min`` minutes.

        ``sources`` (per-cell secretion/uptake) are held fixed over the steps.
        """
        for _ in range(n_steps):
            if sources is not None:
                self._apply_sources(sources)
            if self.backend.is_gpu:
                self._sweeps_gpu()
            else:
                self._sweeps_cpu()

    def total_mass(self):
        """(F,) sum of each field over the lattice times voxel volume (host float64)."""
        vol = self.spacing_um**self.ndim
        return self.backend.to_host(self._buf[self._cur].sum(axis=1, dtype=np.float64)) * vol

    def close(self) -> None:
        """Stop the helper thread of the CPU engine (also done at garbage collection)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- internals ---------------------------------------------------------------------

    def _layout_axes(self, layout: int) -> tuple[int, ...]:
        """Canonical axes in buffer order after ``layout`` sweeps (cyclic rotation)."""
        return tuple((layout + j) % self.ndim for j in range(self.ndim))

    def _apply_vessels(self, layout: int, buf, fields) -> None:
        if not self._vessel_index:
            return
        idx = self._vessel_index[layout]
        for j, f in enumerate(self._vessel_fields):
            if f in fields:
                buf[f, idx] = self._vessel_vals[j]

    def _apply_sources(self, s: Sources) -> None:
        xp = self.backend.xp
        dt = self._dt
        u = self._buf[self._cur]
        sites = xp.asarray(s.sites)
        if sites.size == 0:
            return
        sec = xp.asarray(s.secretion, dtype=self.dtype)
        upt = xp.asarray(s.uptake, dtype=self.dtype)
        u[:, sites] = (u[:, sites] + dt * sec) / (1 + dt * upt)

    def _plan_blocks(self, axis: int) -> list[tuple[int, int, int, int]]:
        """CPU work blocks (f0, f1, w0, w1) for a sweep of ``axis`` (fields never mix
        diffusing and non-diffusing within a block)."""
        n = self.shape[axis]
        w_total = self.n_sites // n
        diffusing = self._coeffs[axis].diffusing
        blocks = []
        f = 0
        while f < self.n_fields:
            g = f
            while g < self.n_fields and diffusing[g] == diffusing[f]:
                g += 1
            if w_total >= _CPU_TARGET_PLANE // 2:
                n_chunks = max(1, round(w_total / _CPU_TARGET_PLANE))
                edges = np.linspace(0, w_total, n_chunks + 1).round().astype(int)
                for ff in range(f, g):
                    blocks += [(ff, ff + 1, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
            else:
                per = max(1, _CPU_TARGET_PLANE // w_total)
                for ff in range(f, g, per):
                    blocks.append((ff, min(g, ff + per), 0, w_total))
            f = g
        return blocks

    def _sweeps_cpu(self) -> None:
        """All axis sweeps on NumPy: the main thread sweeps block after block while a
        helper thread writes finished blocks, transposed, into the other buffer."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tme-lod")
        nf = self.n_fields
        pending: dict[int, list[Future]] = {f: [] for f in range(nf)}
        for axis in range(self.ndim):
            c = self._coeffs[axis]
            n = self.shape[axis]
            w_total = self.n_sites // n
            src_flat = self._buf[self._cur]
            src = src_flat.reshape(nf, n, w_total)
            dst = self._buf[1 - self._cur].reshape(nf, w_total, n)
            new_pending: dict[int, list[Future]] = {f: [] for f in range(nf)}
            ready = set()
            for f0, f1, w0, w1 in self._blocks[axis]:
                for f in range(f0, f1):
                    if f not in ready:
                        for fut in pending[f]:
                            fut.result()
                        self._apply_vessels(axis, src_flat, (f,))
                        ready.add(f)
                block = src[f0:f1, :, w0:w1]
                if c.diffusing[f0]:
                    thomas_sweep_numpy(block, c.cp[f0:f1], c.rhs_lo[f0:f1], c.rhs_hi[f0:f1])
                else:
                    block *= c.invb[f0:f1, None, None]
                fut = self._pool.submit(rotate_numpy, block, dst[f0:f1, w0:w1, :], c.scale[f0:f1])
                for f in range(f0, f1):
                    new_pending[f].append(fut)
            pending = new_pending
            self._cur = 1 - self._cur
        for f in range(nf):
            for fut in pending[f]:
                fut.result()
        self._apply_vessels(0, self._buf[self._cur], range(nf))

    def _sweeps_gpu(self) -> None:
        """All axis sweeps with the CUDA kernels of kernels/lod.cu (two launches per axis)."""
        xp = self.backend.xp
        nf = self.n_fields
        for axis in range(self.ndim):
            n = self.shape[axis]
            w_total = self.n_sites // n
            self._apply_vessels(axis, self._buf[self._cur], range(nf))
            src = self._buf[self._cur]
            dst = self._buf[1 - self._cur]
            c = self._dev_coeffs[axis]
            cuda_sweep(self.backend, src, c["cp"], c["rhs_lo"], c["rhs_hi"], c["invb"], c["diffusing"], nf, n, w_total)
            cuda_rotate(self.backend, src, dst, c["scale"], nf, n, w_total)
            self._cur = 1 - self._cur
        self._apply_vessels(0, self._buf[self._cur], range(nf))
        del xp


# --------------------------------------------------------------------------------------
# CUDA launchers (kernels/lod.cu)
# --------------------------------------------------------------------------------------

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def cuda_sweep(backend: Backend, u, cp, rhs_lo, rhs_hi, invb, diffusing, nf: int, n: int, w: int) -> None:
    """Launch ``lod_sweep`` on ``u`` viewed as (F, n, W): one thread per line, all fields."""
    mod = backend.raw_module("lod.cu")
    kern = mod.get_function(f"lod_sweep_{_SUFFIX[np.dtype(u.dtype)]}")
    lines = nf * w
    threads = 128
    kern(((lines + threads - 1) // threads,), (threads,),
         (u, cp, rhs_lo, rhs_hi, invb, diffusing, np.int32(nf), np.int32(n), np.int64(w)))


def cuda_rotate(backend: Backend, src, dst, scale, nf: int, n: int, w: int) -> None:
    """Launch ``lod_rotate``: dst (F, W, n) = transpose of src (F, n, W) times scale[f]."""
    mod = backend.raw_module("lod.cu")
    kern = mod.get_function(f"lod_rotate_{_SUFFIX[np.dtype(src.dtype)]}")
    grid = ((w + 31) // 32, (n + 31) // 32, nf)
    kern(grid, (32, 8), (src, dst, scale, np.int32(n), np.int64(w)))
