"""Run files: the HDF5 layout and crash-safe writes (runfile), output writers with their
schedules (writers), running a config to a file with checkpoints and resume (runner),
and reading runs back as pandas and xarray objects (readers). docs/output.md."""

from .readers import Run, open_run, open_runs
from .runfile import RunFile, RunFileError
from .runner import default_output_path, run

__all__ = ["Run", "RunFile", "RunFileError", "default_output_path", "open_run", "open_runs", "run"]
