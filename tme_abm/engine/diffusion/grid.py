"""What every field solver needs to know about a set of fields: the lattice they live on
and each field's coefficients and boundary values (one object for the LOD solver, the
multigrid solver and the :class:`~.solver.DiffusionSolver` that holds both)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NOFLUX = math.nan
"""Face value meaning "no-flux" in ``face_values``."""


@dataclass(frozen=True)
class FieldGrid:
    """F reaction-diffusion fields on a 2D or 3D lattice, in R independent copies.

    Attributes:
        shape: lattice shape, 2 or 3 ints (voxels), C order (z, y, x) / (y, x).
        spacing_um: voxel edge length, micrometres.
        diffusion_um2_per_min: (F,) diffusion coefficients, um^2/min (>= 0).
        decay_per_min: (F,) first-order decay rates, 1/min (>= 0).
        face_values: (F, ndim, 2) fixed value on the low/high face of each axis, NaN
            (:data:`NOFLUX`) for a no-flux face (default: all no-flux).
        vessel_sites: (k,) int64 flat indices of fixed-value voxels (vessels); replicate
            r's voxels are offset by ``r * prod(shape)`` (default: none).
        vessel_values: (F,) value each field is held at on vessel voxels, NaN where a
            field is not fixed by vessels (default: none fixed).
        replicates: independent copies of every field (a batch); each evolves as a
            single copy would.

    Arrays given as lists are converted and checked; a bad value raises ValueError.
    """

    shape: tuple[int, ...]
    spacing_um: float
    diffusion_um2_per_min: np.ndarray
    decay_per_min: np.ndarray
    face_values: np.ndarray = None  # type: ignore[assignment]  # filled in __post_init__
    vessel_sites: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    vessel_values: np.ndarray = None  # type: ignore[assignment]  # filled in __post_init__
    replicates: int = 1

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"shape must be 2 or 3 positive ints, got {self.shape}")
        if not float(self.spacing_um) > 0:
            raise ValueError(f"spacing_um must be > 0, got {self.spacing_um}")
        diffusion = np.atleast_1d(np.asarray(self.diffusion_um2_per_min, dtype=float))
        decay = np.atleast_1d(np.asarray(self.decay_per_min, dtype=float))
        nf = len(diffusion)
        if decay.shape != (nf,):
            raise ValueError("decay_per_min must have one entry per field")
        if (diffusion < 0).any() or (decay < 0).any():
            raise ValueError("diffusion and decay must be >= 0")
        nd = len(shape)
        faces = np.full((nf, nd, 2), NOFLUX) if self.face_values is None else np.array(self.face_values, float)
        if faces.shape != (nf, nd, 2):
            raise ValueError(f"face_values must have shape {(nf, nd, 2)}, got {faces.shape}")
        values = np.full(nf, np.nan) if self.vessel_values is None else np.array(self.vessel_values, float)
        if values.shape != (nf,):
            raise ValueError("vessel_values must have one entry per field (NaN = not fixed)")
        if int(self.replicates) < 1:
            raise ValueError(f"replicates must be >= 1, got {self.replicates}")
        sites = np.unique(np.asarray(self.vessel_sites, dtype=np.int64))
        for name, value in (("shape", shape), ("spacing_um", float(self.spacing_um)),
                            ("diffusion_um2_per_min", diffusion), ("decay_per_min", decay), ("face_values", faces),
                            ("vessel_sites", sites), ("vessel_values", values), ("replicates", int(self.replicates))):
            object.__setattr__(self, name, value)

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
