"""Array backend chosen once per run: NumPy on the CPU or CuPy on a CUDA device.

This is the only module that imports CuPy, and :meth:`Backend.to_host` is the one function
that reads device values on the host (tests/test_host_reads.py holds a tick to that;
operations whose result size depends on the data still wait for a GPU). Everything
else takes ``xp`` from a :class:`Backend`, so the same model code runs on both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Array = Any
"""A NumPy or CuPy array (what ``Backend.xp`` makes); its shape and dtype are in the docstrings."""

BACKEND_ENV = "TME_ABM_BACKEND"
BACKEND_CHOICES = ("auto", "numpy", "cupy")
DTYPE_CHOICES = ("float32", "float64")


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _cupy_device_usable() -> tuple[Any, str]:
    """Return (cupy module, "") when a CUDA device is usable, else (None, reason)."""
    try:
        import cupy  # noqa: PLC0415  (the one import of cupy in the package)
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        return None, f"CuPy is not importable ({exc.__class__.__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return None, "CuPy found no CUDA device"
        cupy.zeros(1).sum().item()  # a real launch: drivers can list a device yet fail here
    except Exception as exc:
        return None, f"no usable CUDA device ({exc.__class__.__name__}: {exc})"
    return cupy, ""


@dataclass
class Backend:
    """The array module, dtype and device of a run.

    Attributes:
        name: "numpy" or "cupy".
        xp: the array module (``numpy`` or ``cupy``).
        dtype: floating dtype of field arrays (float32 or float64).
        device: human-readable device description.
    """

    name: str
    xp: Any
    dtype: np.dtype
    device: str
    host_copies: int = 0
    """Calls of :meth:`to_host` so far (``tme-abm bench model`` reports them per tick)."""
    _modules: dict = field(default_factory=dict, repr=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def to_host(self, a) -> np.ndarray:
        """Return ``a`` as a NumPy array (a copy from the device for CuPy)."""
        self.host_copies += 1
        if self.is_gpu:
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on NumPy); used by benchmarks."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def free_memory_bytes(self) -> int:
        """Free memory on the device that arrays of this backend live in."""
        if self.is_gpu:
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free)
        return host_available_memory_bytes()

    def raw_module(self, name: str):
        """Compile (once per backend) and return the ``cupy.RawModule`` of the kernel
        family ``name`` (``kernels/<name>.cu``, :func:`kernel_source`)."""
        if not self.is_gpu:
            raise BackendError("CUDA kernels need the cupy backend")
        if name not in self._modules:
            self._modules[name] = self.xp.RawModule(code=kernel_source(name).read_text(), options=("--std=c++14",))
        return self._modules[name]


KERNEL_DIRS = (Path(__file__).resolve().parents[1] / "kernels", Path(__file__).resolve().parents[2] / "kernels")
"""Where the CUDA sources are: ``tme_abm/kernels`` in an installed wheel (the build maps
the top-level ``kernels/`` there), ``kernels/`` beside the package in a checkout or an
editable install."""


def kernel_source(name: str) -> Path:
    """The CUDA source ``<name>.cu`` of a kernel family (:data:`KERNEL_DIRS`, first found)."""
    for d in KERNEL_DIRS:
        path = d / f"{name}.cu"
        if path.is_file():
            return path
    raise BackendError(f"CUDA source {name}.cu not found in {' or '.join(map(str, KERNEL_DIRS))}")


def cuda_device_count() -> int:
    """CUDA devices usable through CuPy on this machine (0 without CuPy or a driver)."""
    cupy, _reason = _cupy_device_usable()
    return int(cupy.cuda.runtime.getDeviceCount()) if cupy is not None else 0


def host_available_memory_bytes() -> int:
    """MemAvailable of this host in bytes (falls back to free physical pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_backend_name(requested: str | None) -> str:
    """Apply the ``TME_ABM_BACKEND`` override to a requested backend name."""
    env = os.environ.get(BACKEND_ENV, "").strip().lower()
    name = env or (requested or "auto")
    if name not in BACKEND_CHOICES:
        source = f"environment variable {BACKEND_ENV}" if env else "backend"
        raise BackendError(f"{source}: {name!r} is not one of {', '.join(BACKEND_CHOICES)}")
    return name


_auto_notice_logged = False

AUTO_GPU_MIN_WORK = 2.0e6
"""Work per tick (lattice sites x (fields + 1) x replicates) from which ``auto`` runs on
a usable GPU. Interpolated (log-log) between two H200 measurements against one CPU core
of the same machine: the baseline (1e4 sites, 7 fields: 8e4) ran 8x slower on the GPU,
the 3D lesion (160^3 sites: 3.3e7) 6.6x faster; the ratio crosses 1 near 1.9e6
(docs/architecture.md, "Choosing the backend")."""


def work_per_tick(n_sites: int, n_fields: int, replicates: int = 1) -> float:
    """The work of a tick that sets the backend: sites x (fields + 1: the cells, at most
    one per site) x replicates."""
    return float(n_sites) * (n_fields + 1) * replicates


def make_backend(requested: str | None = "auto", dtype: str = "float32", work: float | None = None) -> Backend:
    """Choose the backend once.

    Args:
        requested: "auto", "numpy" or "cupy"; ``TME_ABM_BACKEND`` overrides it.
        dtype: "float32" or "float64" for field arrays.
        work: the run's :func:`work_per_tick`, for "auto" (None: any work).

    "auto" uses CuPy when a CUDA device is usable and the work per tick is at least
    :data:`AUTO_GPU_MIN_WORK`, and otherwise NumPy, logging its choice once per process.
    An explicit "cupy" without a device raises BackendError.
    """
    global _auto_notice_logged
    if dtype not in DTYPE_CHOICES:
        raise BackendError(f"dtype: {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    name = resolve_backend_name(requested)
    np_dtype = np.dtype(dtype)
    if name == "auto" and work is not None and work < AUTO_GPU_MIN_WORK:
        if not _auto_notice_logged:
            log.info("backend auto: %.3g site-fields per tick is below %.3g, where a GPU starts to pay; using "
                        "NumPy on the CPU (--backend cupy to use a GPU anyway)", work, AUTO_GPU_MIN_WORK)
            _auto_notice_logged = True
        return Backend("numpy", np, np_dtype, "cpu")
    if name in ("auto", "cupy"):
        cupy, reason = _cupy_device_usable()
        if cupy is not None:
            dev = cupy.cuda.Device()
            props = cupy.cuda.runtime.getDeviceProperties(dev.id)
            label = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            if name == "auto" and not _auto_notice_logged:
                log.info("backend auto: using CuPy on cuda:%s %s", dev.id, label)
                _auto_notice_logged = True
            return Backend("cupy", cupy, np_dtype, f"cuda:{dev.id} {label}")
        if name == "cupy":
            raise BackendError(
                f"backend 'cupy' was requested but {reason}; install the extra "
                "`pip install 'tme-abm[cuda12]'` on a machine with a CUDA GPU, or use --backend numpy"
            )
        if not _auto_notice_logged:
            log.info("backend auto: %s; using NumPy on the CPU", reason)
            _auto_notice_logged = True
    return Backend("numpy", np, np_dtype, "cpu")

