"""Reading run files: :func:`open_run` for one run, :func:`open_runs` for an outcomes table.

Every reader goes through :func:`tme_abm.io.runfile.reading`, so a missing, non-HDF5, corrupt,
truncated or foreign file raises :class:`~tme_abm.io.runfile.RunFileError` naming the file and
the problem instead of an h5py traceback. A run still being written can be read up to
its last flush.
"""

from __future__ import annotations

import glob as _glob
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..biology.outcomes import OUTCOME_UNITS
from ..config import Config, ConfigError, load_yaml, validate_config
from .lock import held
from .runfile import TIME_COLUMN, RunFileError, reading, verify

_VERIFIED: set[tuple[str, int, int]] = set()
"""Files whose every checksum was read, by (path, mtime in ns, size): a file opened again
unchanged is not read twice."""


class Run:
    """One run file, read on demand (no file handle is kept open).

    Attributes:
        path: the file.
        attrs: root attributes (status, seed, backend, device, versions, wall times).
        config_yaml: the resolved config as YAML text.
    """

    def __init__(self, path, check: bool = True):
        self.path = Path(path)
        with reading(self.path) as f:
            self.attrs = {k: _py(v) for k, v in f.attrs.items()}
            self.config_yaml = f["config"][()].decode()
            for group in ("timeseries", "fields", "cells", "checkpoint"):
                if group not in f:
                    raise RunFileError(f"{self.path}: run file lacks the /{group} group (incomplete file)")
            # a file being written changes under the reader (a chunk may be read half
            # rewritten): its checksums are read once the writer is done
            if check and not (self.status == "running" and held(self.path)):
                st = self.path.stat()
                key = (str(self.path.resolve()), st.st_mtime_ns, st.st_size)
                if key not in _VERIFIED:
                    verify(f)
                    _VERIFIED.add(key)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """``running`` (being written, or killed), ``complete`` or ``failed``."""
        return str(self.attrs.get("status", ""))

    @property
    def config(self) -> Config:
        """The run's resolved config, validated."""
        try:
            return validate_config(load_yaml(self.config_yaml))
        except ConfigError as exc:
            raise RunFileError(f"{self.path}: stored config does not validate with this tme_abm version: "
                               f"{exc}") from None

    # ---- time series -------------------------------------------------------------------

    @property
    def timeseries(self) -> pd.DataFrame:
        """One row per recorded tick; columns as in docs/output.md (``time_min`` is the time)."""
        with reading(self.path) as f:
            ts = f["timeseries"]
            n = min(ts[k].shape[0] for k in ts)  # columns of an interrupted write differ
            cols = {(TIME_COLUMN if k == "time" else k): ts[k][:n] for k in ts}
        return pd.DataFrame(cols)

    def timeseries_xr(self):
        """The time series as an xarray Dataset over dimension ``time`` (minutes), with units."""
        import xarray as xr  # noqa: PLC0415 - 0.1 s to import: only these two readers need it
        ts = self.timeseries
        with reading(self.path) as f:
            units = {k: f["timeseries"][k].attrs.get("units", "") for k in f["timeseries"]}
        data = {k: ("time", ts[k].to_numpy(), {"units": _py(units[k])}) for k in ts if k != TIME_COLUMN}
        return xr.Dataset(data, coords={"time": ("time", ts[TIME_COLUMN].to_numpy(), {"units": "min"})})

    # ---- fields ------------------------------------------------------------------------

    def fields(self):
        """Field snapshots as an xarray Dataset, dimensions (time, [z,] y, x), with units.
        Complete snapshots only; the data are read when used."""
        import xarray as xr  # noqa: PLC0415 - 0.1 s to import: only these two readers need it
        try:
            return xr.open_dataset(self.path, engine="h5netcdf", group="fields")
        except (OSError, ValueError) as exc:
            if self.status == "complete":
                raise RunFileError(f"{self.path}: /fields cannot be read as a NetCDF group: {exc}") from None
        # an interrupted snapshot leaves fields one longer than their time axis: read the prefix
        with reading(self.path) as f:
            fg = f["fields"]
            n = len(self.field_times)
            axes = {a: (a, fg[a][:], dict(fg[a].attrs)) for a in ("z", "y", "x") if a in fg}  # C order
            data = {k: (("time", *axes), fg[k][:n], {"units": fg[k].attrs["units"]}) for k in self.field_names}
            coords = {"time": ("time", fg["time"][:n], {"units": "min"}), **axes}
        return xr.Dataset(data, coords={k: (d, v, {kk: _py(vv) for kk, vv in a.items()
                                                   if kk in ("units", "long_name")})
                                        for k, (d, v, a) in coords.items()})

    @property
    def field_names(self) -> list[str]:
        with reading(self.path) as f:
            return [k for k in f["fields"] if k not in ("time", "x", "y", "z")]

    @property
    def field_times(self) -> np.ndarray:
        """(n_snapshots,) field snapshot times, minutes (complete snapshots)."""
        with reading(self.path) as f:
            fg = f["fields"]
            n = min(fg[k].shape[0] for k in fg if k not in ("x", "y", "z"))
            return fg["time"][:n]

    def field(self, name: str, index: int = -1, z: int | None = None) -> np.ndarray:
        """One field snapshot, ``(*lattice_shape)``; ``index`` into :attr:`field_times`.
        ``z`` (3D runs) reads only that plane, ``(ny, nx)``."""
        names = self.field_names
        if name not in names:
            raise KeyError(f"{self.path}: no field {name!r}; fields: {', '.join(names)}")
        n = len(self.field_times)
        if not -n <= index < n:
            raise IndexError(f"{self.path}: field snapshot {index} of {n}")
        with reading(self.path) as f:
            data = f["fields"][name]
            if z is None:
                return data[index % n]
            if data.ndim != 4 or not 0 <= z < data.shape[1]:
                raise IndexError(f"{self.path}: field {name!r} has no z plane {z}")
            return data[index % n, z]

    # ---- cells -------------------------------------------------------------------------

    def _cell_counts(self, cg) -> np.ndarray:
        """Cells per complete snapshot (an interrupted one may have partial columns)."""
        count = cg["count"][: min(cg["count"].shape[0], cg["time"].shape[0])]
        rows = min(cg[k].shape[0] for k in cg if k not in ("time", "count", "cell"))
        return count[: int(np.searchsorted(np.cumsum(count), rows, side="right"))]

    @property
    def cell_times(self) -> np.ndarray:
        """(n_snapshots,) cell snapshot times, minutes."""
        with reading(self.path) as f:
            return f["cells/time"][: len(self._cell_counts(f["cells"]))]

    def cells(self, index: int = -1) -> pd.DataFrame:
        """Every cell of one snapshot (``index`` into :attr:`cell_times`): columns [z,] y, x,
        type, state, id, lineage, antigen, exhaustion (docs/output.md)."""
        with reading(self.path) as f:
            cg = f["cells"]
            count = self._cell_counts(cg)
            n = len(count)
            if not -n <= index < n:
                raise IndexError(f"{self.path}: cell snapshot {index} of {n}")
            i = index % n
            start = int(count[:i].sum())
            stop = start + int(count[i])
            names = [k for k in cg if k not in ("time", "count", "cell")]
            return pd.DataFrame({k: cg[k][start:stop] for k in names})

    # ---- events and outcomes -------------------------------------------------------------

    @property
    def events(self) -> list[dict]:
        """The therapy event log, one dict per event."""
        with reading(self.path) as f:
            return [json.loads(e) for e in f["events"][:]]

    @property
    def outcomes(self) -> dict:
        """Per-run outcomes (empty until the run completes)."""
        with reading(self.path) as f:
            return {k: _py(v) for k, v in f["outcomes"].attrs.items()} if "outcomes" in f else {}

    def summary(self) -> dict:
        """Identity, status and outcomes of the run (what ``tme-abm summarize`` prints)."""
        a = self.attrs
        info = {"path": str(self.path), "name": load_yaml(self.config_yaml).get("name", ""),
                "status": self.status, "seed": a.get("seed"), "backend": a.get("backend"),
                "device": a.get("device"), "package_version": a.get("package_version"),
                "git_commit": a.get("git_commit", ""), "wall_seconds": a.get("wall_seconds")}
        if "error" in a:
            info["error"] = a["error"]
        with reading(self.path) as f:
            t = f["timeseries/time"]
            info["simulated_days"] = float(t[-1]) / 1440.0 if len(t) else 0.0
        info["file_bytes"] = self.path.stat().st_size
        if info["simulated_days"] > 0:
            info["bytes_per_simulated_day"] = info["file_bytes"] / info["simulated_days"]
        info["outcomes"] = self.outcomes
        return info


def open_run(path, check: bool = True) -> Run:
    """Open one run file (raises :class:`~tme_abm.io.runfile.RunFileError` if it is not
    one). With ``check``, every dataset is read once to verify its checksums (a corrupt
    dataset raises, naming it); the check reads the whole file, once per version of it."""
    return Run(path, check)


def run_paths(where) -> list[Path]:
    """The ``*.h5`` files at ``where``: a folder (searched recursively) or a glob pattern."""
    where = str(where)
    if Path(where).is_dir():
        paths = sorted(Path(where).rglob("*.h5"))
    else:
        paths = sorted(Path(p) for p in _glob.glob(where, recursive=True))
    if not paths:
        raise RunFileError(f"{where}: no run files found")
    return paths


def open_runs(where) -> pd.DataFrame:
    """One row per run file found at ``where`` (a folder, searched recursively for
    ``*.h5``, a glob pattern, or a list of files): path, name, seed, status, error and
    every outcome. Files that cannot be read as runs (or fail their checksums) get
    status ``unreadable`` and the reason in ``error``, so one bad file does not hide
    the others."""
    rows = []
    paths = [Path(p) for p in where] if isinstance(where, list | tuple) else run_paths(where)
    for p in paths:
        try:
            info = open_run(p).summary()
        except RunFileError as exc:
            rows.append({"path": str(p), "status": "unreadable", "error": str(exc)})
            continue
        row = {k: info.get(k) for k in ("path", "name", "seed", "status")}
        row["error"] = info.get("error", "")
        row.update(info["outcomes"])
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(info: dict) -> str:
    """Plain-text rendering of :meth:`Run.summary`."""
    lines = [f"{info['path']}: {info['name']} (seed {info['seed']}), status {info['status']}, "
             f"{info['simulated_days']:.2f} simulated days, {info['file_bytes'] / 1e6:.2f} MB"
             + (f" ({info['bytes_per_simulated_day'] / 1e6:.3f} MB per simulated day)"
                if "bytes_per_simulated_day" in info else "")]
    if info.get("error"):
        lines.append(f"error: {info['error']}")
    if info.get("wall_seconds") is not None:
        lines.append(f"backend {info['backend']} ({info['device']}), {info['wall_seconds']:.1f} s wall, "
                     f"tme_abm {info['package_version']} {info['git_commit']}".rstrip())
    out = info.get("outcomes") or {}
    if not out:
        lines.append("no outcomes (the run has not completed)")
    width = max((len(k) for k in out), default=0)
    for k, v in out.items():
        lines.append(f"  {k:<{width}}  {fmt_value(v)} {OUTCOME_UNITS.get(k, '')}".rstrip())
    return "\n".join(lines)


def fmt_value(v) -> str:
    """A value as printed in summaries and tables: floats to 4 significant digits."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _py(v):
    """An HDF5 attribute value as a plain Python value."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
