"""HDF5 run files: the layout, crash-safe appends, checkpoints, and the checks readers share.

The layout (format ``tme_abm-run-4``) is documented in docs/output.md. Every group that
holds arrays is a NetCDF-4 style group (HDF5 dimension scales) with CF-1.10 attributes
(UDUNITS ``units``, ``long_name``), so
``xarray.open_dataset(path, engine="h5netcdf", group="timeseries")`` (or ``"fields"``,
``"cells"``) opens it with named dimensions and units.

Crash safety: the file is flushed after every write, and data once flushed is never
rewritten with different bytes. Growing datasets (time series, cells, events) are
stored uncompressed, so appending rewrites a partly filled chunk in place with the same
old bytes; only write-once chunks (one field snapshot each, checkpoint arrays) are
compressed, because HDF5 moves a compressed chunk that grows and a kill during that
move can corrupt it. A run killed at any moment therefore leaves a file that opens and
holds everything up to the last flush, with ``status = "running"`` (datasets of one
group may then differ in length by the records of an unfinished write; readers use the
common prefix). The model state is checkpointed into one of two slots, and
``/checkpoint`` points at a slot only after that slot is completely written, so a kill
during a checkpoint leaves the previous one intact. Resuming truncates the appended data
back to the checkpoint's time and continues (tme_abm.io.runner).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..biology.populations import POPULATIONS
from ..engine.lattice import axis_names
from ..model import column_attrs
from ..version import __version__

FORMAT = "tme_abm-run-4"
CONVENTIONS = "CF-1.10"
ROW_BLOCK = 500
"""Time-series rows buffered between writes (one resize per column per block) ..."""
ROW_SECONDS = 5.0
"""... or for at most this many wall seconds, so a killed run loses at most that much."""
TIME_COLUMN = "time_min"
"""The time-series row key stored as the ``time`` coordinate of /timeseries."""
CELL_COLUMNS = {"z": "i4", "y": "i4", "x": "i4", "type": "i1", "state": "i1", "id": "i8", "lineage": "i8",
                "antigen": "f4", "exhaustion": "f4"}
"""Cell-snapshot columns and their HDF5 dtypes (``z`` only on 3D lattices)."""
_CELL_ATTRS = {
    **{a: {"units": "1", "long_name": f"{a} index of the cell's site"} for a in "zyx"},
    "type": {"long_name": "cell type", "flag_values": np.array([p.code for p in POPULATIONS], np.int8),
             "flag_meanings": " ".join(p.kind for p in POPULATIONS)},
    "state": {"long_name": "cell state, by type",
              "comment": "tumor: 0 alive, 1 necrotic, 2 apoptotic, 3 killed; car_t: 0 effector, 1 engaged, "
                         "2 exhausted; monocyte: 0 resting, 1 activated; granulocyte: 0"},
    "id": {"long_name": "cell id, unique within its type for the whole run"},
    "lineage": {"long_name": "id of the founding tumor cell of the cell's clone (-1: not a tumor cell)"},
    "antigen": {"units": "1", "long_name": "tumor antigen density (NaN: not a tumor cell)"},
    "exhaustion": {"units": "1", "long_name": "CAR T exhaustion (NaN: not a CAR T cell)"},
}
_DIMENSION_ONLY = "This is a netCDF dimension but not a netCDF variable."  # the netCDF-4 marker
_SLOTS = ("slot0", "slot1")


class RunFileError(ValueError):
    """A path that is not a readable tme_abm run file (missing, not HDF5, corrupt,
    truncated, or written by something else)."""


class DiskFullError(RunFileError):
    """The disk holding a run file is full, or too full for the next write; with
    ``resumable``, the run's files keep their last checkpoint and ``--resume`` continues
    them once there is space."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


MARGIN_BYTES = 2**20
"""Free space every write leaves on the run file's disk beyond its own bytes (HDF5's
metadata and the failure record): a write that would leave less stops the run first,
with :class:`DiskFullError`, so the disk never fills under HDF5."""


def free_bytes(path) -> int:
    """Free bytes, for this user, on the disk that holds ``path`` (a file or folder that
    may not exist yet: its nearest existing ancestor's disk)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full disk: a
    :class:`DiskFullError`, an OSError with ENOSPC, or an h5py error carrying HDF5's
    ``errno = 28``."""
    while exc is not None:
        if isinstance(exc, DiskFullError) or isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "errno = 28" in str(exc) or os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def starting_path(path: Path) -> Path:
    """Where :meth:`RunFile.create` writes a new file's layout before renaming it to ``path``."""
    return path.with_name(f".{path.name}.start")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fixed_size(dtype) -> bool:
    """Whether HDF5 filters (the checksum) apply to ``dtype``: not to variable-length
    strings, whose chunks hold only references into the file's heap."""
    dt = np.dtype(dtype)
    return dt.kind != "O" and h5py.check_vlen_dtype(dt) is None


def _scale(group, name: str, *, data=None, dtype="f8", growing: bool = False, chunk: int = 1024,
           variable: bool = True, **attrs):
    """A 1-D dimension scale (a netCDF dimension, and its coordinate unless ``variable``
    is false) with CF attributes ``attrs``."""
    if growing:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,), fletcher32=True)
    else:
        ds = group.create_dataset(name, data=np.asarray(data, dtype=dtype))
    ds.make_scale(name if variable else _DIMENSION_ONLY)
    ds.attrs.update(attrs)
    return ds


def _growing(group, name: str, dims, dtype, *, chunk: tuple[int, ...] = (1024,), compress: bool = False, **attrs):
    """A dataset growing along its first axis, with the dimension scales ``dims`` and CF
    attributes ``attrs``."""
    inner = tuple(len(d) for d in dims[1:])
    kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
    ds = group.create_dataset(name, shape=(0, *inner), maxshape=(None, *inner), dtype=dtype, chunks=chunk,
                              fletcher32=_fixed_size(dtype), **kw)
    for axis, d in enumerate(dims):
        ds.dims[axis].attach_scale(d)
    ds.attrs.update(attrs)
    return ds


def _append(ds, values) -> None:
    n = ds.shape[0]
    values = np.asarray(values)
    ds.resize((n + values.shape[0], *ds.shape[1:]))
    ds[n:] = values


class RunFile:
    """One run file open for writing; :meth:`create` for a new run, :meth:`reopen` to resume.

    Every method that writes ends with a flush, except :meth:`append_row`, which buffers
    rows up to ``ROW_BLOCK`` rows or ``ROW_SECONDS`` (and writes them at every checkpoint).
    """

    def __init__(self, f: h5py.File):
        self.f = f
        self.path = Path(f.filename)
        stored = [k for k in f["timeseries"] if k != "time"]
        self._columns: list[str] | None = [TIME_COLUMN, *stored] if stored else None
        self._rows: list[list[float]] = []
        self._rows_since = time.monotonic()

    # ---- creating and reopening --------------------------------------------------------

    @classmethod
    def create(cls, path, *, config_yaml: str, attrs: dict, lattice_shape, spacing_um: float,
               field_names, field_units, dtype: str, overwrite: bool = False) -> RunFile:
        """A new run file with its groups and coordinates; refuses to replace an existing
        file unless ``overwrite``.

        Args:
            attrs: root attributes (seed, backend, device, ...).
            lattice_shape, spacing_um: the lattice, C order ([z,] y, x coordinates in um).
            field_names, field_units: the fields, in solver order; ``dtype`` their dtype.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: output file exists; choose another --out, pass --overwrite, "
                                  f"or --resume it")
        path.parent.mkdir(parents=True, exist_ok=True)
        # the layout is written under a temporary name and renamed complete: a kill at any
        # moment leaves either no file (the run starts again) or one that resumes
        start = starting_path(path)
        start.unlink(missing_ok=True)  # a start killed before its rename
        f = h5py.File(start, "w", track_order=True)
        f.attrs.update({"Conventions": CONVENTIONS, "title": "tme_abm run",
                        "source": f"tme_abm {__version__}", "format": FORMAT, "package_version": __version__,
                        "status": "running", "started_utc": _now(), **attrs})
        f.create_dataset("config", data=config_yaml, dtype=h5py.string_dtype())
        f["config"].attrs["long_name"] = "the run's resolved config (YAML)"
        ev = _scale(f, "event", dtype="i8", growing=True, chunk=64, variable=False)
        _growing(f, "events", [ev], h5py.string_dtype(), chunk=(64,),
                 long_name="therapy events, one JSON object each")

        ts = f.create_group("timeseries", track_order=True)
        _scale(ts, "time", growing=True, **column_attrs(TIME_COLUMN, {}))

        fg = f.create_group("fields", track_order=True)
        ft = _scale(fg, "time", growing=True, chunk=256, units="min", long_name="snapshot time")
        axes = [_scale(fg, a, data=np.arange(n) * spacing_um, units="um", axis=a.upper(),
                       long_name=f"{a} coordinate of the voxel centre")
                for a, n in zip(axis_names(len(lattice_shape)), lattice_shape)]
        for name, units in zip(field_names, field_units):
            _growing(fg, name, [ft, *axes], dtype, chunk=(1, *lattice_shape), compress=True, units=units,
                     long_name=f"{name} field")

        cg = f.create_group("cells", track_order=True)
        ct = _scale(cg, "time", growing=True, chunk=256, units="min", long_name="snapshot time")
        # a CF contiguous ragged array: snapshot i is count[i] cells along the cell dimension
        _growing(cg, "count", [ct], "i8", chunk=(256,), sample_dimension="cell", units="1",
                 long_name="cells in each snapshot")
        cell = _scale(cg, "cell", dtype="i1", growing=True, chunk=65536, variable=False)
        for name, dt in CELL_COLUMNS.items():
            if name == "z" and len(lattice_shape) < 3:
                continue
            _growing(cg, name, [cell], dt, chunk=(16384,), **_CELL_ATTRS[name])

        ck = f.create_group("checkpoint")
        ck.attrs.update({"latest": "", "tick": -1, "time_min": np.nan})
        f.close()
        os.replace(start, path)
        return cls(h5py.File(path, "r+"))

    @classmethod
    def reopen(cls, path) -> RunFile:
        """Open an existing run file to continue it (see :meth:`rewind`)."""
        with reading(path) as f:
            status = str(f.attrs.get("status", ""))
        if status == "complete":
            raise RunFileError(f"{path}: the run is complete; nothing to resume")
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            raise RunFileError(f"{path}: cannot open for writing: {exc}") from None
        return cls(f)

    # ---- appending -----------------------------------------------------------------------

    @property
    def n_events(self) -> int:
        """Events stored so far."""
        return int(self.f["events"].shape[0])

    def append_row(self, row: dict[str, float], field_units: dict[str, str]) -> None:
        """Buffer one time-series row (the same keys every call)."""
        ts = self.f["timeseries"]
        if self._columns is None:
            self._columns = list(row)
            for k in row:
                if k != TIME_COLUMN:
                    _growing(ts, k, [ts["time"]], "f8", **column_attrs(k, field_units))
        elif set(row) != set(self._columns):
            raise ValueError(f"time-series columns changed: {sorted(set(row) ^ set(self._columns))}")
        self._rows.append([float(row[k]) for k in self._columns])
        if len(self._rows) >= ROW_BLOCK or time.monotonic() - self._rows_since > ROW_SECONDS:
            self.flush_rows()

    def flush_rows(self) -> None:
        """Write the buffered rows and flush."""
        self._rows_since = time.monotonic()
        if not self._rows:
            return
        block = np.asarray(self._rows, dtype=np.float64)
        self._room(block.nbytes)
        ts = self.f["timeseries"]
        for j, k in enumerate(self._columns):
            _append(ts["time" if k == TIME_COLUMN else k], block[:, j])
        self._rows = []
        self.f.flush()

    def snapshot_fields(self, time_min: float, names, values: np.ndarray) -> None:
        """Append one snapshot of every field; ``values`` is (F, *shape) on the host."""
        self._room(values.nbytes)
        fg = self.f["fields"]
        for i, name in enumerate(names):
            _append(fg[name], values[i][None])
        _append(fg["time"], [time_min])  # last: a snapshot counts once its time is there
        self.f.flush()

    def snapshot_cells(self, time_min: float, table: dict[str, np.ndarray]) -> None:
        """Append one cell snapshot; ``table`` maps :data:`CELL_COLUMNS` to (n,) arrays."""
        self._room(sum(np.asarray(v).nbytes for v in table.values()))
        cg = self.f["cells"]
        n = len(table["type"])
        for name in CELL_COLUMNS:
            if name in cg:
                _append(cg[name], table[name])
        cg["cell"].resize((cg["cell"].shape[0] + n,))  # a dimension only: no data written
        _append(cg["count"], [n])
        _append(cg["time"], [time_min])
        self.f.flush()

    def write_events(self, events: list[dict]) -> None:
        """Store the event log so far (one JSON object per event): appends the events
        not yet in the file (the log only grows; :meth:`rewind` shortens it)."""
        ds, ev = self.f["events"], self.f["event"]
        n = ds.shape[0]
        if len(events) > n:
            _append(ds, np.array([json.dumps(e) for e in events[n:]], dtype=object))
            _append(ev, np.arange(n, len(events)))
        self.f.flush()

    def write_outcomes(self, outcomes: dict) -> None:
        """Store the run's outcomes as attributes of ``/outcomes``."""
        g = self.f.require_group("outcomes")
        g.attrs.update(outcomes)
        self.f.flush()

    # ---- checkpoints ---------------------------------------------------------------------

    def write_checkpoint(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Store a model state (``tme_abm.model.get_state``) in the slot not holding the
        latest one, then point ``/checkpoint`` at it."""
        self.flush_rows()
        self._room(sum(v.nbytes for v in arrays.values()))
        ck = self.f["checkpoint"]
        slot = _SLOTS[1] if ck.attrs["latest"] == _SLOTS[0] else _SLOTS[0]
        if slot in ck:
            del ck[slot]
        g = ck.create_group(slot)
        for k, v in arrays.items():
            kw: dict = {"chunks": True, "fletcher32": True} if v.size and _fixed_size(v.dtype) else {}
            if v.size > 4096:
                kw.update(compression="gzip", compression_opts=1, shuffle=True)
            g.create_dataset(k, data=v, **kw)
        g.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
        self.f.flush()
        ck.attrs.update({"latest": slot, "tick": int(meta["steps"]), "time_min": float(meta["time_min"])})
        self.f.flush()

    def read_checkpoint(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The latest checkpoint's ``(arrays, meta)``, or None if the run was stopped before
        its first checkpoint was complete."""
        ck = self.f["checkpoint"]
        slot = str(ck.attrs["latest"])
        if not slot:
            return None
        g = ck[slot]
        arrays: dict[str, np.ndarray] = {}
        g.visititems(lambda k, obj: arrays.__setitem__(k, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        meta = json.loads(arrays.pop("meta").decode())
        return arrays, meta

    def rewind(self, time_min: float | None, events: list[dict]) -> None:
        """Drop everything recorded after ``time_min`` (the latest checkpoint's time; None:
        everything, to start again) and mark the run as running again, so it can continue
        from that checkpoint."""
        self._rows = []
        keep = -np.inf if time_min is None else time_min + 1e-6
        ts = self.f["timeseries"]
        n = int(np.searchsorted(ts["time"][:], keep, side="right"))
        for ds in ts.values():
            ds.resize((n, *ds.shape[1:]))
        fg = self.f["fields"]
        n = int(np.searchsorted(fg["time"][:], keep, side="right"))
        for name, ds in fg.items():
            if name not in ("x", "y", "z"):
                ds.resize((n, *ds.shape[1:]))
        cg = self.f["cells"]
        n = int(np.searchsorted(cg["time"][:], keep, side="right"))
        total = int(cg["count"][:n].sum())
        for name, ds in cg.items():
            ds.resize((n if name in ("time", "count") else total,))
        n = min(len(events), self.f["events"].shape[0], self.f["event"].shape[0])
        self.f["events"].resize((n,))
        self.f["event"].resize((n,))
        self.write_events(events)
        if "outcomes" in self.f:
            del self.f["outcomes"]
        for k in ("error", "finished_utc"):
            if k in self.f.attrs:
                del self.f.attrs[k]
        self.f.attrs["status"] = "running"
        self.f.attrs["resumed_utc"] = _now()
        self.f.flush()

    # ---- a full disk ---------------------------------------------------------------------

    def _room(self, nbytes: int) -> None:
        """Stop, before writing anything, a write of ``nbytes`` that would leave less
        than :data:`MARGIN_BYTES` free."""
        free = free_bytes(self.path)
        if free < nbytes + MARGIN_BYTES:
            raise DiskFullError(f"{self.path}: disk full: {free / 2**20:.1f} MiB free, the next write needs "
                                f"{(nbytes + MARGIN_BYTES) / 2**20:.1f} MiB")

    def detach(self) -> None:
        """Close the file without writing another byte to it: after a write failed
        with the disk full, HDF5's cache holds changes that reference space it could
        not write, and flushing them would corrupt the file (or crash HDF5). Its
        descriptor is pointed at /dev/null first, so the close writes there and the
        file stays as its last flush left it: what a kill at that moment leaves, which
        resumes from its latest checkpoint."""
        if not self.f.id.valid:
            return
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, self.f.id.get_vfd_handle())
        finally:
            os.close(null)
        try:
            self.f.close()
        except Exception:  # HDF5 reports its failed flush; nothing reaches the file
            pass

    # ---- the end -------------------------------------------------------------------------

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        """Record the final status (and the error) and close the file."""
        if not self.f.id.valid:
            return
        try:
            self.flush_rows()
        finally:
            self.f.attrs["status"] = status
            self.f.attrs["finished_utc"] = _now()
            if error:
                self.f.attrs["error"] = error
            self.f.close()


@contextmanager
def reading(path):
    """Open a run file for reading (``h5py.File``), turning every way it can fail to be
    one into a :class:`RunFileError` that names the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if not h5py.is_hdf5(path):
        raise RunFileError(f"{path}: not an HDF5 file (a tme_abm run file is HDF5)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if "lock" not in str(exc):
            raise RunFileError(f"{path}: HDF5 file cannot be opened (truncated or corrupt): {exc}") from None
        try:  # a run still being written holds a lock; read it up to its last flush anyway
            f = h5py.File(path, "r", locking=False)
        except OSError as exc2:
            raise RunFileError(f"{path}: HDF5 file cannot be opened: {exc2}") from None
    try:
        fmt = str(f.attrs.get("format", ""))
        if not fmt.startswith("tme_abm-run-"):
            raise RunFileError(f"{path}: HDF5 file but not a tme_abm run file (no 'format' attribute "
                               f"'tme_abm-run-N')")
        if fmt != FORMAT:
            raise RunFileError(f"{path}: run file format {fmt!r}; this version of tme_abm reads {FORMAT!r} "
                               f"(the file was written by tme_abm {f.attrs.get('package_version', '?')}: read it with "
                               f"that version, or run its config again)")
        yield f
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, RunFileError):
            raise
        raise RunFileError(f"{path}: run file is corrupt or incomplete: {type(exc).__name__}: {exc}") from None
    finally:
        f.close()


def verify(f: h5py.File) -> None:
    """Read every dataset of an open run file once, so that HDF5 checks each chunk's
    Fletcher-32 checksum; a chunk that fails (or cannot be read or decompressed) raises
    :class:`RunFileError` naming the dataset. Reads chunk by chunk: memory stays at one
    chunk of the largest dataset."""
    bad: list[str] = []

    def check(name, obj):
        if bad or not isinstance(obj, h5py.Dataset):
            return
        try:
            if obj.chunks is None or obj.size == 0:
                obj[()]
            else:
                for sel in obj.iter_chunks():
                    obj[sel]
        except (OSError, ValueError, TypeError) as exc:
            bad.append(f"/{name}: {str(exc).splitlines()[0]}")

    f.visititems(check)
    if bad:
        raise RunFileError(f"{f.filename}: corrupt data in {bad[0]} (a checksum or a compressed chunk does not "
                           f"match what was written; the file cannot be trusted)")
