"""What every field solver needs to know about a set of fields: the lattice they live on
and each field's coefficients and boundary values (one object for the LOD solver, the
multigrid solver and the :class:`~.solver.DiffusionSolver` that holds both)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

NOFLUX = math.nan
"""Face value meaning "no-flux" in ``face_values``."""


class FieldGrid:
    """F reaction-diffusion fields on a 2D or 3D lattice, in R independent copies.

    Args (each kept as an attribute of that name, arrays as float64/int64 NumPy arrays):
        shape: lattice shape, 2 or 3 ints (voxels), C order (z, y, x) / (y, x).
        spacing_um: voxel edge length, micrometres.
        diffusion_um2_per_min: (F,) diffusion coefficients, um^2/min (>= 0).
        decay_per_min: (F,) first-order decay rates, 1/min (>= 0).
        face_values: (F, ndim, 2) fixed value on the low/high face of each axis, NaN
            (:data:`NOFLUX`) for a no-flux face (default: all no-flux).
        vessel_sites: (k,) flat indices of fixed-value voxels (vessels); replicate r's
            voxels are offset by ``r * prod(shape)`` (default: none).
        vessel_values: (F,) value each field is held at on vessel voxels, NaN where a
            field is not fixed by vessels (default: none fixed).
        replicates: independent copies of every field (a batch); each evolves as a
            single copy would.

    A bad value raises ValueError.
    """

    def __init__(self, shape: Sequence[int], spacing_um: float, diffusion_um2_per_min: ArrayLike,
                 decay_per_min: ArrayLike, face_values: ArrayLike | None = None, vessel_sites: ArrayLike = (),
                 vessel_values: ArrayLike | None = None, replicates: int = 1):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ValueError(f"shape must be 2 or 3 positive ints, got {shape}")
        self.spacing_um = float(spacing_um)
        if not self.spacing_um > 0:
            raise ValueError(f"spacing_um must be > 0, got {spacing_um}")
        self.diffusion_um2_per_min = np.atleast_1d(np.asarray(diffusion_um2_per_min, dtype=float))
        self.decay_per_min = np.atleast_1d(np.asarray(decay_per_min, dtype=float))
        nf, nd = len(self.diffusion_um2_per_min), len(self.shape)
        if self.decay_per_min.shape != (nf,):
            raise ValueError("decay_per_min must have one entry per field")
        if (self.diffusion_um2_per_min < 0).any() or (self.decay_per_min < 0).any():
            raise ValueError("diffusion and decay must be >= 0")
        self.face_values = np.full((nf, nd, 2), NOFLUX) if face_values is None else np.array(face_values, float)
        if self.face_values.shape != (nf, nd, 2):
            raise ValueError(f"face_values must have shape {(nf, nd, 2)}, got {self.face_values.shape}")
        self.vessel_values = np.full(nf, np.nan) if vessel_values is None else np.array(vessel_values, float)
        if self.vessel_values.shape != (nf,):
            raise ValueError("vessel_values must have one entry per field (NaN = not fixed)")
        self.vessel_sites = np.unique(np.asarray(vessel_sites, dtype=np.int64))
        self.replicates = int(replicates)
        if self.replicates < 1:
            raise ValueError(f"replicates must be >= 1, got {replicates}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_fields(self) -> int:
        return len(self.diffusion_um2_per_min)

    @property
    def n_sites(self) -> int:
        """Voxels of one copy."""
        return int(np.prod(self.shape))

    def subset(self, fields) -> FieldGrid:
        """The grid of the fields ``fields`` ((k,) indices) only."""
        idx = np.asarray(fields, dtype=np.int64)
        return FieldGrid(self.shape, self.spacing_um, self.diffusion_um2_per_min[idx], self.decay_per_min[idx],
                         self.face_values[idx], self.vessel_sites, self.vessel_values[idx], self.replicates)

    def fixed_voxels(self) -> np.ndarray:
        """(F, R * n_sites) bool: the voxels vessels hold at ``vessel_values`` per field."""
        fixed = np.zeros((self.n_fields, self.replicates * self.n_sites), bool)
        if len(self.vessel_sites):
            fixed[:, self.vessel_sites] = ~np.isnan(self.vessel_values)[:, None]
        return fixed


def neighbour_weights(shape: Sequence[int], face_weights: np.ndarray) -> np.ndarray:
    """(F, *shape) each voxel's neighbour weight in the diagonal of the discrete operator
    (in units of D / h^2): 1 per neighbour inside the lattice, 2 for a fixed face (the
    ghost value 2g - u0), 0 for a no-flux face. ``face_weights``: (F, ndim, 2), 2.0 for
    a fixed face and 0.0 for a no-flux one, per axis and side."""
    nf, nd = len(face_weights), len(shape)
    w = np.zeros((nf, *shape))
    for a in range(nd):
        inner = np.full(shape[a], 2.0)
        inner[0] = inner[-1] = 1.0
        if shape[a] == 1:
            inner[0] = 0.0
        lo, hi = np.zeros(shape[a]), np.zeros(shape[a])
        lo[0] = hi[-1] = 1.0
        for f in range(nf):
            line = inner + face_weights[f, a, 0] * lo + face_weights[f, a, 1] * hi
            w[f] += line.reshape([-1 if b == a else 1 for b in range(nd)])
    return w
