"""The reaction-diffusion solver: per field, an implicit LOD step (CUDA kernels in
``kernels/*.cu`` with NumPy twins) or a multigrid steady-state solve, on a 2D or 3D lattice."""

from .grid import NOFLUX, FieldGrid
from .lod import Sources
from .solver import DiffusionSolver, quasi_steady

__all__ = ["NOFLUX", "DiffusionSolver", "FieldGrid", "Sources", "quasi_steady"]
