"""tme_abm: GPU-accelerated agent-based simulator of the tumor microenvironment under CAR T therapy.

The public names below are imported when first used (PEP 562), so importing a layer
pulls in only what that layer needs: ``tme_abm.engine`` (the solver, the backend, the
random numbers) imports with NumPy alone, without Mesa, pydantic or h5py, and
``tme-abm --version`` does not load the model.
"""

from __future__ import annotations

import importlib

from .version import __version__ as __version__  # the one name loaded eagerly

_PUBLIC = {
    "Config": ".config", "ConfigError": ".config", "load_config": ".config",
    "Backend": ".engine.backend", "BackendError": ".engine.backend", "make_backend": ".engine.backend",
    "NOFLUX": ".engine.diffusion", "DiffusionSolver": ".engine.diffusion", "Sources": ".engine.diffusion",
    "Run": ".io", "RunFileError": ".io", "open_run": ".io", "open_runs": ".io",
    "TMEModel": ".model",
}
"""Public name -> the module that defines it."""

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tme_abm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
