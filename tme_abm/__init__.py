"""tme_abm: GPU-accelerated agent-based simulator of the tumor microenvironment under CAR T therapy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tme-abm")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from .engine.backend import Backend, BackendError, make_backend  # noqa: E402
from .config import Config, ConfigError, load_config  # noqa: E402
from .engine.diffusion import NOFLUX, DiffusionSolver, Sources  # noqa: E402
from .io import RunFileError  # noqa: E402
from .model import TMEModel  # noqa: E402
from .analysis import Run, open_run, open_runs  # noqa: E402

__all__ = [
    "Backend", "BackendError", "Config", "ConfigError", "DiffusionSolver", "NOFLUX", "Run", "RunFileError",
    "Sources", "TMEModel", "__version__", "load_config", "make_backend", "open_run", "open_runs",
]
