"""Calibration: a declared spec, history matching with Gaussian-process emulators run as
batched sweeps, the chosen point confirmed, and its adoption as the defaults
(docs/calibration.md)."""

from .report import adopt
from .run import calibrate
from .spec import CalibrationSpec, load_calibration

__all__ = ["CalibrationSpec", "adopt", "calibrate", "load_calibration"]
