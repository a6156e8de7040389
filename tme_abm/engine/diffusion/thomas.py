"""Thomas coefficients of the LOD line solves and the NumPy twins of the CUDA kernels
in ``kernels/lod_sweep.cu`` and ``kernels/lod_rotate.cu`` (also the CPU engine's building blocks).

The recurrence is written in a scaled form that needs two array operations per plane
and pass instead of three: with ``cp_i = r / denom_i`` the forward pass is
``g_i = cp_i (d_i + g_{i-1})`` and the backward pass ``h_i = g_i + cp_i h_{i+1}``; then
``u = h / r``. Every twin works on NumPy arrays in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisCoefficients:
    """Precomputed Thomas coefficients for one axis and one dt (host arrays)."""

    b: np.ndarray  # (F, n) matrix diagonal without cell uptake (faces included)
    r: np.ndarray  # (F,) D*dt/dx^2
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
) -> AxisCoefficients:
    """Thomas coefficients for lines of length ``n``, per field (computed in float64).

    Args:
        n: number of voxels along the axis.
        r: (F,) D*dt/dx^2, dimensionless.
        kappa: (F,) decay per axis sweep, lambda*dt/ndim, dimensionless.
        face_lo, face_hi: (F,) fixed face values, NaN for no-flux.
        dtype: dtype of the returned arrays.
    """
    nf = len(r)
    bs = np.zeros((nf, n))
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
        bs[f] = b
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
    return AxisCoefficients(
        b=bs.astype(dtype),
        r=np.asarray(r, dtype=dtype),
        cp=cp.astype(dtype),
        rhs_lo=rhs_lo.astype(dtype),
        rhs_hi=rhs_hi.astype(dtype),
        invb=invb.astype(dtype),
        scale=scale.astype(dtype),
        diffusing=diffusing,
    )


def scaled_thomas_passes(planes, cps) -> None:
    """Forward ``g_i = cp_i (d_i + g_{i-1})`` and backward ``h_i = g_i + cp_i h_{i+1}``
    passes over a list of planes, in place; ``cps[i]`` broadcasts against a plane."""
    n = len(planes)
    planes[0] *= cps[0]
    for i in range(1, n):
        planes[i] += planes[i - 1]
        planes[i] *= cps[i]
    tmp = np.empty(planes[0].shape, planes[0].dtype)
    for i in range(n - 2, -1, -1):
        np.multiply(planes[i + 1], cps[i], out=tmp)
        planes[i] += tmp


def _lead(a, ndim: int):
    """``a`` ((fg,) or (fg, n)) with singleton axes appended up to ``ndim`` axes."""
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def thomas_sweep_numpy(v, cp, rhs_lo, rhs_hi) -> None:
    """Scaled Thomas solve along axis -2 of ``v``, in place; twin of ``lod_sweep``.

    Args:
        v: (fg, ..., n, w) array view of diffusing fields (``...``: replicates); on
            return it holds ``r * u_new``.
        cp: (fg, n) coefficients ``r / denom_i``.
        rhs_lo, rhs_hi: (fg,) face terms added to the first and last plane.
    """
    n = v.shape[-2]
    planes = [v[..., i, :] for i in range(n)]
    cps = _lead(np.ascontiguousarray(cp.T), v.ndim)  # (n, fg, 1, ...)
    planes[0] += _lead(rhs_lo, v.ndim - 1)
    planes[-1] += _lead(rhs_hi, v.ndim - 1)
    scaled_thomas_passes(planes, cps)


def sink_coefficients_numpy(e, b, r) -> None:
    """Per-voxel Thomas coefficients ``cp_i = r / (b_i + e_i - r cp_{i-1})`` along axis -2,
    in place.

    Args:
        e: (..., n, w) extra diagonal (cell uptake ``dt*U/ndim``); overwritten with ``cp``.
        b: (n,) diagonal without uptake (faces and decay included).
        r: D*dt/dx^2 (> 0).
    """
    n = e.shape[-2]
    e += b[:, None]  # e now holds the full diagonal
    tmp = np.empty(e[..., 0, :].shape, e.dtype)
    np.divide(r, e[..., 0, :], out=e[..., 0, :])
    for i in range(1, n):
        np.multiply(e[..., i - 1, :], -r, out=tmp)
        tmp += e[..., i, :]
        np.divide(r, tmp, out=e[..., i, :])


def thomas_sweep_cp_numpy(v, cp, rhs_lo, rhs_hi) -> None:
    """Scaled Thomas solve of one field along axis -2 of ``v`` (..., n, w) with per-voxel
    coefficients ``cp`` (..., n, w) from :func:`sink_coefficients_numpy`, in place."""
    n = v.shape[-2]
    v[..., 0, :] += rhs_lo
    v[..., n - 1, :] += rhs_hi
    scaled_thomas_passes([v[..., i, :] for i in range(n)], [cp[..., i, :] for i in range(n)])


def thomas_sweep_sink_numpy(v, e, b, r, rhs_lo, rhs_hi) -> None:
    """Scaled Thomas solve of one diffusing field with per-voxel extra diagonal ``e``
    (cell uptake, ``dt*U/ndim``), in place; twin of ``lod_sweep_sink``.

    Args:
        v: (n, w) array view; on return it holds ``r * u_new``.
        e: (n, w) extra diagonal; overwritten with the per-voxel ``cp``.
        b: (n,) diagonal without uptake (faces and decay included).
        r: D*dt/dx^2 (> 0).
        rhs_lo, rhs_hi: face terms added to the first and last plane.
    """
    sink_coefficients_numpy(e, b, r)
    thomas_sweep_cp_numpy(v, e, rhs_lo, rhs_hi)


def rotate_numpy(src, dst, scale) -> None:
    """``dst[f, ..., w, i] = src[f, ..., i, w] * scale[f]``; twin of ``lod_rotate``.

    Args:
        src: (fg, ..., n, w) array view.
        dst: (fg, ..., w, n) array view, written.
        scale: (fg,) per-field factor.
    """
    np.multiply(src.swapaxes(-1, -2), _lead(scale, src.ndim), out=dst)
