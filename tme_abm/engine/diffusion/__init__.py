"""The reaction-diffusion solver: per field, an implicit LOD step (CUDA kernels in
``kernels/*.cu`` with NumPy twins) or a multigrid steady-state solve, on a 2D or 3D lattice."""

from .lod import NOFLUX, Sources
from .solver import DiffusionSolver, quasi_steady

__all__ = ["NOFLUX", "DiffusionSolver", "Sources", "quasi_steady"]
