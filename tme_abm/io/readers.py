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

from ..biology.growth import gompertz_birth_per_min
from ..biology.outcomes import OUTCOME_UNITS
from ..biology.populations.car_t import days_to_exhaustion
from ..biology.rules import RuleSet
from ..config import Config, ConfigError, load_yaml, validate_config
from .runfile import TIME_COLUMN, RunFileError, reading


class Run:
    """One run file, read on demand (no file handle is kept open).

    Attributes:
        path: the file.
        attrs: root attributes (status, seed, backend, device, versions, wall times).
        config_yaml: the resolved config as YAML text.
    """

    def __init__(self, path):
        self.path = Path(path)
        with reading(self.path) as f:
            self.attrs = {k: _py(v) for k, v in f.attrs.items()}
            self.config_yaml = f["config"][()].decode()
            for group in ("timeseries", "fields", "cells", "checkpoint"):
                if group not in f:
                    raise RunFileError(f"{self.path}: run file lacks the /{group} group (incomplete file)")

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
        info["calibration"] = self.calibration()
        return info

    def calibration(self, days: int = 14) -> dict:
        """The calibration measures of docs/model.md.

        Tumor cells killed by CAR T per non-exhausted lattice CAR T per day, for each
        whole day after infusion (the ``tumor_killed`` count is the last 24 h's kills,
        since killed cells are cleared after ``tumor.clearance_min`` = 1440 min); the day
        of the blood CAR T peak; blood CAR T (cells/uL) at its peak and on days 28 and 90
        (NaN when the run ends earlier); the CRS onset (first day >= 0 with grade >= 1;
        NaN if none) and the maximum grade."""
        ts = self.timeseries
        out = {"kills_per_car_t_per_day": [], "peak_blood_car_t_day": math.nan, "crs_onset_day": math.nan,
               "peak_blood_car_t_per_ul": math.nan, "blood_car_t_per_ul_day_28": math.nan,
               "blood_car_t_per_ul_day_90": math.nan, "max_crs_grade": math.nan}
        if ts.empty:
            return out
        for d in range(1, days + 1):
            w = ts[(ts["day"] > d - 1) & (ts["day"] <= d)]
            if w.empty or w["day"].iloc[-1] < d - 1e-6:
                break
            eff = float(w["car_t_effector"].mean())
            out["kills_per_car_t_per_day"].append(float(w["tumor_killed"].iloc[-1]) / eff if eff > 0 else math.nan)
        per_ul = ts["blood_car_t"].to_numpy() / (self.config.patient.blood_volume_ml * 1000.0)
        day = ts["day"].to_numpy()
        i = int(per_ul.argmax())
        out["peak_blood_car_t_day"], out["peak_blood_car_t_per_ul"] = float(day[i]), float(per_ul[i])
        for d in (28, 90):
            if day[-1] >= d - 1e-9:
                out[f"blood_car_t_per_ul_day_{d}"] = float(per_ul[int(np.searchsorted(day, d - 1e-9))])
        onset = ts.loc[(ts["day"] >= 0) & (ts["crs_grade"] >= 1), "day"]
        out["crs_onset_day"] = float(onset.iloc[0]) if len(onset) else math.nan
        out["max_crs_grade"] = float(ts.loc[ts["day"] >= 0, "crs_grade"].max())
        out.update(self._lesion_calibration(ts))
        return out

    def _lesion_calibration(self, ts: pd.DataFrame) -> dict:
        """The lesion's measures (docs/model.md, "Lesion calibration"): at the first
        therapy event (the end of the burn-in) the median pO2 at tumor cells and at
        cell-free sites, the median adenosine and pH at tumor cells, the necrotic fraction
        and the share of the starting cells alive; the share of lattice CAR T exhausted on
        days 7 and 14; and the antigen-negative cells born per cell per day by loss at
        division at that steady state (loss per division x the Gompertz birth rate); the
        doubling time at a tenth of the carrying capacity, from the config; and the days
        a CAR T cell engaged 8 times a day (Halle 2016: 2-16) takes to exhaust at the
        exhaust rules of the lesion's median adenosine and pO2 (no myeloid contact)."""
        cfg = self.config
        first = cfg.start_day + cfg.time.burn_in_days
        row = ts[ts["day"] <= first + 1e-9].iloc[-1]
        dead = row["tumor_necrotic"] + row["tumor_apoptotic"] + row["tumor_killed"]
        out = {k: float(row[k]) if k in row else math.nan
               for k in ("tumor_po2_median", "normal_po2_median", "tumor_adenosine_median", "tumor_ph_median")}
        out["necrotic_fraction"] = float(row["tumor_necrotic"] / max(row["tumor_alive"] + dead, 1))
        start = ts.iloc[0]
        out["lesion_kept"] = float(row["tumor_alive"] / start["tumor_alive"]) if start["tumor_alive"] else math.nan
        t = cfg.tumor
        capacity = t.carrying_capacity_cells or start["tumor_alive"] + start.get("marrow_normal", 0.0)
        niche = row["tumor_alive"] + row.get("marrow_normal", 0.0)
        birth = float(gompertz_birth_per_min(niche, capacity, t.gompertz_per_min, t.apoptosis_per_min,
                                             t.divide_per_min)) if niche > 0 else math.nan
        out["antigen_loss_per_cell_per_day"] = t.antigen.loss_per_division * birth * 1440.0
        net = min(t.divide_per_min - t.apoptosis_per_min, t.gompertz_per_min * math.log(10.0))
        out["doubling_days_at_tenth_capacity"] = math.log(2.0) / net / 1440.0 if net > 0 else math.inf
        c = cfg.car_t
        rules = RuleSet([c.rules], np)
        lesion = {"adenosine": out["tumor_adenosine_median"], "oxygen": out["tumor_po2_median"]}
        signals = {n: np.array([lesion.get(n, 0.0)]) for n in rules.behaviour_signals("exhaust")}
        factor = float(np.asarray(rules.factor("exhaust", signals)).reshape(-1)[0])
        out["days_to_exhaustion_8_per_day"] = days_to_exhaustion(
            8.0, c.exhaustion_per_engagement * factor, c.exhaustion_irreversible, c.exhaustion_recovery_per_min,
            c.engagement_min) if c.exhaustion_per_engagement > 0 and np.isfinite(factor) else math.inf
        for d in (7, 14):
            w = ts[ts["day"] >= d - 1e-9]
            total = w["car_t_effector"].iloc[0] + w["car_t_exhausted"].iloc[0] if len(w) else 0.0
            out[f"exhausted_share_day_{d}"] = float(w["car_t_exhausted"].iloc[0] / total) if total else math.nan
        return out


CALIBRATION_MEASURES = {
    "peak_blood_car_t_day": "blood CAR T peak day",
    "peak_blood_car_t_per_ul": "blood CAR T at the peak (cells/uL)",
    "expansion_fold": "expansion fold (peak / day 1)",
    "blood_car_t_per_ul_day_28": "blood CAR T on day 28 (cells/uL)",
    "blood_car_t_per_ul_day_90": "blood CAR T on day 90 (cells/uL)",
    "crs_onset_day": "CRS onset day (runs with CRS)",
    "crs_duration_days": "CRS duration, days (runs with CRS)",
    "tumor_po2_median": "tumor pO2 at the first event, median (mmHg)",
    "normal_po2_median": "cell-free tissue pO2 at the first event, median (mmHg)",
    "tumor_adenosine_median": "tumor adenosine at the first event, median (uM)",
    "tumor_ph_median": "tumor pHe at the first event, median",
    "necrotic_fraction": "necrotic fraction of the lesion at the first event",
    "lesion_kept": "alive tumor cells at the first event / at the start",
    "antigen_loss_per_cell_per_day": "antigen-negative cells born per tumor cell per day at steady state",
    "doubling_days_at_tenth_capacity": "tumor doubling time at 10% of capacity, days (from the config)",
    "days_to_exhaustion_8_per_day": "days to exhaustion at 8 engagements a day in the lesion",
    "exhausted_share_day_7": "exhausted share of lattice CAR T, day 7",
    "exhausted_share_day_14": "exhausted share of lattice CAR T, day 14",
}
"""The patient-level and lesion calibration measures across runs (docs/model.md,
"Patient calibration", "Lesion calibration")."""


def calibration_table(where) -> pd.DataFrame:
    """The patient-level and lesion calibration of the complete runs at ``where`` (a folder or glob,
    as :func:`open_runs`): per measure of :data:`CALIBRATION_MEASURES`, the number of
    runs it is defined in and its median, quartiles and range; then the share of runs
    with any CRS and with severe CRS (grade >= 3)."""
    per_run = []
    for p in run_paths(where):
        run = open_run(p)
        if run.status != "complete":
            continue
        per_run.append({**run.calibration(), **{k: run.outcomes[k] for k in ("expansion_fold", "crs_duration_days")}})
    if not per_run:
        raise RunFileError(f"{where}: no complete run files found")
    df = pd.DataFrame(per_run)
    crs = df["max_crs_grade"] >= 1
    rows = []
    for key, label in CALIBRATION_MEASURES.items():
        v = df.loc[crs, key] if key.startswith("crs_") else df[key]
        v = v.dropna().astype(float)
        q = v.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_numpy() if len(v) else np.full(5, math.nan)
        rows.append({"measure": label, "runs": len(v), "median": q[2], "q25": q[1], "q75": q[3],
                     "min": q[0], "max": q[4]})
    for label, share in (("share with CRS (grade >= 1)", crs.mean()),
                         ("share with severe CRS (grade >= 3)", (df["max_crs_grade"] >= 3).mean())):
        rows.append({"measure": label, "runs": len(df), "median": float(share), "q25": math.nan, "q75": math.nan,
                     "min": math.nan, "max": math.nan})
    return pd.DataFrame(rows)


def open_run(path) -> Run:
    """Open one run file (raises :class:`~tme_abm.io.runfile.RunFileError` if it is not one)."""
    return Run(path)


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
    ``*.h5``, or a glob pattern): path, name, seed, status, error and every outcome.
    Files that cannot be read as runs get status ``unreadable`` and the reason in
    ``error``, so one bad file does not hide the others."""
    rows = []
    paths = run_paths(where)
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
    cal = info.get("calibration")
    if cal and cal["kills_per_car_t_per_day"]:
        lines.append("calibration (docs/model.md): kills per CAR T per day on days 1.. "
                     + " ".join(fmt_value(k) for k in cal["kills_per_car_t_per_day"])
                     + f"; blood CAR T peak day {fmt_value(cal['peak_blood_car_t_day'])}; "
                       f"CRS onset day {fmt_value(cal['crs_onset_day'])}")
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
