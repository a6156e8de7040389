"""What the web view reads, and only under its root: one run's frames one snapshot at a
time, a folder's runs labelled by arm, and the path check that keeps the page inside
the folder it was started on.

Nothing here writes: a run still being written is read up to its last flush (the run
file's readers open it without the writer's lock and keep no handle open).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...io.readers import Run, open_run, open_runs, run_paths
from ...io.runfile import RunFileError
from ...studies.errors import SweepError
from ...studies.experiments.analysis import arm_table, per_run, timecourse
from ...studies.experiments.spec import arm_names, experiment_config
from ...studies.sweep import SweepSpec, read_manifest
from ...studies.table import read_table
from ..lattice import Geometry

SERIES = ("burden_relative", "blood_car_t", "systemic_cytokine", "car_t_on_lattice")
"""Time courses a folder view draws per arm (columns of :func:`timecourse`)."""


class ViewError(ValueError):
    """A path or a folder the view cannot show (one line: what and why)."""


def _is_under(root: Path, target: Path) -> bool:
    """Whether the resolved ``target`` is the resolved ``root`` or lies under it."""
    return target == root or root in target.parents


def resolve_under(root: Path, path: str | Path) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved through ``..`` and symbolic
    links; refused unless it is ``root`` or lies under it."""
    root = Path(root).resolve()
    text = str(path).strip()
    if not text:
        raise ViewError("no path given")
    target = (root / text).resolve()
    if not _is_under(root, target):
        raise ViewError(f"{text}: outside the folder this view serves ({root}); only files under it open")
    if not target.exists():
        raise ViewError(f"{text}: no such file under {root}")
    return target


def is_run_file(path: Path) -> bool:
    return path.is_file() and path.suffix == ".h5"


class RunFrames:
    """One run file as the view shows it: the snapshot times of cells and fields, read
    one frame at a time (:meth:`cells_at`, :meth:`field_at`), the time series, events
    and outcomes. :meth:`refresh` re-reads what a run still being written has added.

    Attributes:
        shape: lattice shape, C order ([nz,] ny, nx); geometry: what drawing its lattice
        needs (:class:`~tme_abm.viz.lattice.Geometry`); start_day: the run's first day
        relative to infusion.
    """

    def __init__(self, path: Path):
        self.run: Run = open_run(path)
        cfg = self.run.config
        self.geometry = Geometry.of(cfg)
        self.shape = self.geometry.shape
        self.start_day = float(cfg.start_day)
        self.refresh()

    def refresh(self) -> None:
        r = self.run
        r.attrs = Run(r.path).attrs  # status and wall time of a run still being written
        self.cell_times = np.asarray(r.cell_times, dtype=float)
        self.field_times = np.asarray(r.field_times, dtype=float)
        self.field_names = r.field_names
        with r.fields() as ds:
            self.field_units = {n: ds[n].attrs.get("units", "") for n in self.field_names}
        self.timeseries = r.timeseries
        self.events = r.events
        self.outcomes = r.outcomes

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def times_min(self) -> np.ndarray:
        """(n,) every snapshot time, cells or fields, minutes since the start, sorted."""
        return np.union1d(self.cell_times, self.field_times)

    def day(self, time_min: float) -> float:
        return self.start_day + time_min / 1440.0

    @staticmethod
    def _at(times: np.ndarray, time_min: float) -> int | None:
        """Index of the last snapshot at or before ``time_min`` (None: none yet)."""
        i = int(np.searchsorted(times, time_min + 1e-9, side="right")) - 1
        return i if i >= 0 else None

    def cells_at(self, time_min: float) -> tuple[pd.DataFrame, float] | None:
        """The cell snapshot shown at ``time_min`` and its own time (minutes)."""
        i = self._at(self.cell_times, time_min)
        return None if i is None else (self.run.cells(i), float(self.cell_times[i]))

    def field_at(self, name: str, time_min: float, z: int | None = None) -> tuple[np.ndarray, float] | None:
        """The ``(ny, nx)`` plane of field ``name`` shown at ``time_min`` (plane ``z`` of a
        3D lattice, default the middle) and its snapshot time; only that plane is read."""
        i = self._at(self.field_times, time_min)
        if i is None:
            return None
        if len(self.shape) == 3:
            z = self.shape[0] // 2 if z is None else z
        return self.run.field(name, i, z=z), float(self.field_times[i])


def _runs_under(root: Path) -> pd.DataFrame:
    """:func:`open_runs` of the run files under ``root``, each path resolved (symbolic
    links included) before anything is read: one that leads outside ``root`` is not
    opened and gets status ``refused``. Paths are relative to ``root``."""
    inside, refused = [], []
    for p in run_paths(root):
        (inside if _is_under(root, p.resolve()) else refused).append(p)
    table = open_runs([p.resolve() for p in inside]) if inside else pd.DataFrame(columns=["path", "name", "status"])
    table["path"] = [str(Path(p).relative_to(root)) for p in table["path"]]
    rows = [{"path": str(p.relative_to(root)), "status": "refused",
             "error": "a link to a file outside this folder: not opened"} for p in refused]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table


class FolderRuns:
    """The runs under a folder, labelled by arm: an experiment's arms, a sweep's points,
    or (any other folder) each config's name.

    Attributes:
        kind: ``experiment``, ``sweep`` or ``runs``; names: the arms in order;
        runs: one row per complete run (path relative to the folder, arm, seed and every
        outcome); failed: runs that did not complete, per arm; problems: those runs'
        path, status and error; arms: per-arm rates with Wilson 95% intervals and
        medians (:func:`arm_table`).
    """

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        try:
            manifest = read_manifest(self.root)
        except SweepError:
            manifest = None
        if manifest is not None:
            spec = SweepSpec.model_validate(manifest["spec"])
            exp = experiment_config(spec, self.root / "sweep.yaml") if spec.experiment is not None else None
            self.kind = "sweep" if exp is None else "experiment"
            self.names = arm_names(spec, exp)
            table = read_table(self.root)
        else:
            self.kind = "runs"
            try:
                table = _runs_under(self.root)
            except RunFileError as exc:
                raise ViewError(str(exc)) from None
            labels = table["name"].fillna(table["status"]).astype(str)
            self.names = list(dict.fromkeys(labels))
            table["point"] = [self.names.index(n) for n in labels]
        self.runs = per_run(table, self.names).reset_index(drop=True)
        bad = table[table["status"] != "complete"]
        self.problems = bad[[c for c in ("path", "status", "error") if c in bad]].reset_index(drop=True)
        self.failed = pd.Series([self.names[p] for p in bad["point"]], dtype=object).value_counts()
        self.arms = arm_table(self.runs, self.names, self.failed)

    def timecourses(self) -> pd.DataFrame:
        """Per arm, series of :data:`SERIES` and quarter day: median, quartiles, mean and
        95% interval over the arm's runs (an experiment's ``timecourse.csv`` when it has
        one, otherwise read from the run files)."""
        saved = self.root / "experiment" / "timecourse.csv"
        if saved.exists():
            return pd.read_csv(saved)
        return timecourse(self.root, self.runs, list(SERIES))

