"""Inside a tick, device values reach the host only through ``Backend.to_host``.

The model runs on a strict stand-in for NumPy: its arrays refuse ``int()``, ``float()``,
``bool()``, ``__index__``, ``item()``, ``tolist()`` and NumPy functions called on them
from outside the array module (implicit host conversion) while ``step()`` runs. On a GPU
each of those would wait for the device unseen; ``to_host`` is the one counted read.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from helpers import BASELINE, EVENTS, SMALL

from tme_abm.config import load_config
from tme_abm.engine.backend import Backend
from tme_abm.model import TMEModel

pytestmark = pytest.mark.slow  # every test here runs models (or a browser)


class HostRead(AssertionError):
    """A device value was read on the host outside ``Backend.to_host``."""


class _Guard:
    strict = False  # set while a tick runs
    in_xp = 0  # > 0 inside a call through the strict array module


class StrictArray(np.ndarray):
    """A "device" array: reductions stay arrays, and host reads raise during a tick."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(StrictArray)  # 0-d results stay on the "device"

    def __array_function__(self, func, types_, args, kwargs):
        if _Guard.strict and not _Guard.in_xp:
            raise HostRead(f"numpy.{func.__name__} called on a device array")
        return super().__array_function__(func, types_, args, kwargs)

    def _read(self, how: str):
        if _Guard.strict:
            raise HostRead(f"{how} of a device array")
        return self.view(np.ndarray)

    def __int__(self):
        return int(self._read("int()"))

    def __float__(self):
        return float(self._read("float()"))

    def __bool__(self):
        return bool(self._read("bool()"))

    def __index__(self):
        return self._read("an index").__index__()

    def item(self, *args):
        return self._read("item()").item(*args)

    def tolist(self):
        return self._read("tolist()").tolist()


def _strict(x):
    if isinstance(x, np.ndarray) and not isinstance(x, StrictArray):
        return x.view(StrictArray)
    return tuple(_strict(v) for v in x) if isinstance(x, tuple) else x


class StrictNumpy(types.ModuleType):
    """NumPy whose functions return StrictArrays (the ``xp`` of the strict backend)."""

    def __init__(self, module=np):
        super().__init__(f"strict_{module.__name__}")
        self._module = module

    def __getattr__(self, name):
        v = getattr(self._module, name)
        if isinstance(v, types.ModuleType):
            return StrictNumpy(v)
        if isinstance(v, type) or not callable(v):
            return v

        def call(*args, **kwargs):
            _Guard.in_xp += 1
            try:
                return _strict(v(*args, **kwargs))
            finally:
                _Guard.in_xp -= 1
        return call


class StrictBackend(Backend):
    def to_host(self, a) -> np.ndarray:
        self.host_copies += 1
        return np.asarray(a).view(np.ndarray)


def strict_steps(model: TMEModel, ticks: int) -> None:
    for _ in range(ticks):
        _Guard.strict = True
        try:
            model.step()
        finally:
            _Guard.strict = False


@pytest.mark.parametrize("seeds", [[1], [1, 2, 3]], ids=["one run", "a batch of 3"])
def test_a_tick_reads_the_device_only_through_to_host(seeds):
    """Every stage, therapy event and writer-facing readout of the small baseline with
    CAR T cells, myeloid cells and every kind of therapy event (960 ticks)."""
    cfg = load_config(BASELINE, [*SMALL, *EVENTS])
    be = StrictBackend("numpy", StrictNumpy(), np.dtype(cfg.dtype), "cpu")
    model = TMEModel(cfg, backend=be, seeds=seeds)
    assert isinstance(model.occupancy, StrictArray) and isinstance(model.tumor.data["site"], StrictArray)
    copies = be.host_copies
    strict_steps(model, cfg.time.n_ticks)
    rows = model.current_rows()
    assert {e["kind"] for e in model.replicas[0].event_log} == {"lymphodepletion", "resection", "radiotherapy",
                                                                "infusion", "mrd"}
    assert rows[0]["car_t_effector"] + rows[0]["car_t_exhausted"] > 0
    per_tick = (be.host_copies - copies) / cfg.time.n_ticks
    assert 1 <= per_tick < 40  # the row, the patient's counts, arrivals, removals, convergence checks


def test_the_strict_backend_catches_a_host_read():
    """The guard is live: an ``int()`` of a device sum during a tick fails the tick."""
    cfg = load_config(BASELINE, [*SMALL, "time.duration_days=3.1"])
    be = StrictBackend("numpy", StrictNumpy(), np.dtype(cfg.dtype), "cpu")
    model = TMEModel(cfg, backend=be)
    model.scheduler.stages[2].actions.append(("peek", lambda: int(model.tumor.data["state"].sum())))
    with pytest.raises(HostRead, match=r"int\(\) of a device array"):
        strict_steps(model, 1)
    model.scheduler.stages[2].actions[-1] = ("peek", lambda: np.flatnonzero(model.occupancy))
    with pytest.raises(HostRead, match="numpy.flatnonzero"):
        strict_steps(model, 1)
