"""HDF5 run files: one writer object with its own schedule (time series, snapshots).

Layout (version 1):
    /                 attrs: format, package_version, seed, backend, device, dtype,
                      status (running|complete|failed), started_utc, finished_utc, error
    /config           resolved config, YAML text
    /timeseries/<col> (n_records,) float64 per column; time_min is the time axis
    /fields/time_min  (n_snapshots,) float64, minutes
    /fields/<name>    (n_snapshots, *shape) snapshots, attrs: units
    /events           the therapy event log: one JSON object per event (string array)
    /outcomes         attrs: one per outcome (response classes as strings)
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import h5py
import numpy as np

from . import __version__

FORMAT = "tme_abm-run-1"
ROW_BLOCK = 500  # time-series rows buffered between writes


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """Writes one run file. Refuses to overwrite an existing file unless asked.

    Args:
        path: output file.
        config_yaml: the resolved config as YAML text.
        attrs: extra root attributes (seed, backend, device, ...).
        overwrite: replace an existing file (otherwise FileExistsError).
    """

    def __init__(self, path, config_yaml: str, attrs: dict, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: output file exists; choose another --out or pass --overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w")
        self.f.attrs["format"] = FORMAT
        self.f.attrs["package_version"] = __version__
        self.f.attrs["status"] = "running"
        self.f.attrs["started_utc"] = _now()
        for k, v in attrs.items():
            self.f.attrs[k] = v
        self.f.create_dataset("config", data=config_yaml, dtype=h5py.string_dtype())
        self.ts = self.f.create_group("timeseries")
        self.fg = self.f.create_group("fields")
        self._n_rows = 0
        self._rows: list[list[float]] = []
        self._columns: list[str] | None = None
        self._n_snap = 0
        self.f.flush()

    def append_row(self, row: dict[str, float]) -> None:
        """Append one time-series row (same keys every call). Rows are buffered and
        written in blocks (one HDF5 resize per column per block, not per row): at every
        snapshot, every ``ROW_BLOCK`` rows and at the end."""
        if self._columns is None:
            self._columns = list(row)
            for k in row:
                self.ts.create_dataset(k, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        elif set(row) != set(self._columns):
            raise ValueError(f"time-series columns changed: {sorted(set(row) ^ set(self._columns))}")
        self._rows.append([float(row[k]) for k in self._columns])
        if len(self._rows) >= ROW_BLOCK:
            self.flush_rows()

    def flush_rows(self) -> None:
        """Write the buffered rows to the file."""
        if not self._rows:
            return
        block = np.asarray(self._rows, dtype=np.float64)
        n0, n1 = self._n_rows, self._n_rows + len(block)
        for j, k in enumerate(self._columns):
            ds = self.ts[k]
            ds.resize((n1,))
            ds[n0:n1] = block[:, j]
        self._n_rows = n1
        self._rows = []
        self.f.flush()

    def snapshot_fields(self, time_min: float, names, units, values: np.ndarray) -> None:
        """Append one snapshot of every field; ``values`` is (F, *shape) on the host."""
        if self._n_snap == 0:
            self.fg.create_dataset("time_min", shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
            for i, name in enumerate(names):
                shp = values.shape[1:]
                ds = self.fg.create_dataset(
                    name, shape=(0, *shp), maxshape=(None, *shp), dtype=values.dtype,
                    chunks=(1, *shp), compression="gzip", compression_opts=4, shuffle=True,
                )
                ds.attrs["units"] = units[i]
        self.flush_rows()
        n = self._n_snap + 1
        self.fg["time_min"].resize((n,))
        self.fg["time_min"][n - 1] = time_min
        for i, name in enumerate(names):
            ds = self.fg[name]
            ds.resize((n, *ds.shape[1:]))
            ds[n - 1] = values[i]
        self._n_snap = n
        self.f.flush()

    def write_events(self, events: list[dict]) -> None:
        """Replace ``/events`` with the event log so far (JSON text per event)."""
        if "events" in self.f:
            del self.f["events"]
        self.f.create_dataset("events", data=[json.dumps(e) for e in events], dtype=h5py.string_dtype())
        self.f.flush()

    def write_outcomes(self, outcomes: dict) -> None:
        """Store the run's outcomes as attributes of ``/outcomes``."""
        g = self.f.require_group("outcomes")
        for k, v in outcomes.items():
            g.attrs[k] = v
        self.f.flush()

    def flush(self) -> None:
        self.flush_rows()
        self.f.flush()

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        """Record the final status and close the file."""
        self.flush_rows()
        self.f.attrs["status"] = status
        self.f.attrs["finished_utc"] = _now()
        if error:
            self.f.attrs["error"] = error
        self.f.close()
