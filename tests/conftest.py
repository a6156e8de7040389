"""Shared fixtures: backends to parametrise over (NumPy always, CuPy where a device exists)."""

from __future__ import annotations

import pytest

from tme_abm.engine.backend import _cupy_device_usable, make_backend

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
