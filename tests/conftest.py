"""Shared fixtures: backends to parametrise over (NumPy always, CuPy where a device exists),
and one uninterrupted small run that the run-file tests compare with and copy."""

from __future__ import annotations

import pytest
from helpers import small

from tme_abm.engine.backend import _cupy_device_usable, make_backend
from tme_abm.io import run

_CUPY, _REASON = _cupy_device_usable()

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.skipif(_CUPY is None, reason=_REASON or "no CUDA"))]


@pytest.fixture(params=BACKENDS)
def backend64(request, monkeypatch):
    """A float64 backend: numpy, and cupy where a CUDA device is usable."""
    monkeypatch.delenv("TME_ABM_BACKEND", raising=False)
    return make_backend(request.param, "float64")


@pytest.fixture
def has_cuda():
    return _CUPY is not None


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted run of the small baseline (tests/helpers.py, ``small()``): read and
    copied, never written."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    run(small(), path, quiet=True)
    return path
