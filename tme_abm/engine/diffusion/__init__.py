"""The reaction-diffusion solver: an implicit LOD step for many fields on a 2D or 3D
lattice, with CUDA kernels (``lod.cu``) and their NumPy twins."""

from .solver import NOFLUX, DiffusionSolver, Sources

__all__ = ["NOFLUX", "DiffusionSolver", "Sources"]
