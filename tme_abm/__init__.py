"""tme_abm: GPU-accelerated agent-based simulator of the tumor microenvironment under CAR T therapy."""

from .config import Config, ConfigError, load_config
from .engine.backend import Backend, BackendError, make_backend
from .engine.diffusion import NOFLUX, DiffusionSolver, Sources
from .io import Run, RunFileError, open_run, open_runs
from .model import TMEModel
from .version import __version__

__all__ = [
    "Backend", "BackendError", "Config", "ConfigError", "DiffusionSolver", "NOFLUX", "Run", "RunFileError",
    "Sources", "TMEModel", "__version__", "load_config", "make_backend", "open_run", "open_runs",
]
