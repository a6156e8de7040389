"""Report figures of one run (``tme-abm report``): PNGs plus an HTML and a text summary.

Figures are drawn with matplotlib's non-interactive Agg canvas, so they work on machines
without a display. Days on every time axis are relative to the first infusion (the
model's ``day``).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..io.readers import Run, open_run
from ..io.runfile import RunFileError
from ..studies.measures import summarize_run
from .lattice import COLOURS, Geometry, colour_limits, draw_cells, extent, label_axes, legend_handles


def mark_events(ax, events: list[dict]) -> None:
    """Dashed vertical lines at therapy events, labelled with their kind."""
    seen = set()
    for e in events:
        ax.axvline(e["day"], color="k", ls="--", lw=0.8, alpha=0.6)
        key = (e["kind"], round(e["day"], 3))
        if key not in seen:
            seen.add(key)
            ax.annotate(e["kind"], (e["day"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7, alpha=0.8)


class ReportError(ValueError):
    """A report that cannot be drawn as asked (a day the run does not cover, an output
    path that is a file)."""


def _snapshot_indices(times_min: np.ndarray, start_day: float, days) -> list[int]:
    """Snapshot indices nearest to ``days`` (default: first, middle, last); a day outside
    the snapshots' span is refused, not moved to the nearest end."""
    if len(times_min) == 0:
        return []
    snap_days = start_day + times_min / 1440.0
    if not days:
        idx = [0, len(times_min) // 2, len(times_min) - 1]
    else:
        step = float(np.min(np.diff(snap_days))) if len(snap_days) > 1 else 0.0
        outside = [d for d in days if not snap_days[0] - step / 2 <= d <= snap_days[-1] + step / 2]
        if outside:
            raise ReportError(f"--day {outside[0]:g}: the run's snapshots span days {snap_days[0]:g} to "
                              f"{snap_days[-1]:g}")
        idx = [int(np.argmin(np.abs(snap_days - d))) for d in days]
    return list(dict.fromkeys(idx))


def populations_figure(run: Run, ts, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for col, label in (("tumor_alive", "tumor (alive)"), ("tumor_necrotic", "tumor (necrotic)"),
                       ("car_t_effector", "CAR T effector"), ("car_t_exhausted", "CAR T exhausted"),
                       ("monocytes", "monocytes"), ("granulocytes", "granulocytes")):
        y = ts[col].to_numpy()
        if (y > 0).any():
            ax.plot(ts["day"], np.where(y > 0, y, np.nan), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("day (relative to infusion)")
    ax.set_ylabel("cells on the lattice")
    mark_events(ax, run.events)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{run.path.name}: populations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def systemic_figure(run: Run, ts, path: Path) -> Figure:
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    absent = []
    for col, label in (("burden", "tumor burden"), ("blood_car_t", "blood CAR T")):
        y = ts[col].to_numpy()
        if np.any(y > 0):  # a log axis shows no zeros: a series with nothing above zero gets no entry
            top.plot(ts["day"], np.where(y > 0, y, np.nan), label=label)
        else:
            absent.append(f"{label}: 0 throughout")
    if absent:
        top.text(0.01, 0.03, "; ".join(absent), transform=top.transAxes, fontsize=8)
    top.set_yscale("log")
    top.set_ylabel("cells (patient)")
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize=8)
    mark_events(top, run.events)
    c = ts["systemic_cytokine"].to_numpy()
    bottom.plot(ts["day"], c, color="tab:red", label="systemic cytokine")
    bottom.set_ylabel("cytokine (pg/mL)")
    grade = bottom.twinx()
    grade.step(ts["day"], ts["crs_grade"], where="post", color="k", lw=1, label="CRS grade")
    grade.set_ylim(-0.2, 4.5)
    grade.set_yticks(range(5))
    grade.set_ylabel("CRS grade")
    bottom.set_xlabel("day (relative to infusion)")
    bottom.legend(fontsize=8, loc="upper left")
    grade.legend(fontsize=8, loc="upper right")
    top.set_title(f"{run.path.name}: blood CAR T, cytokine and CRS")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def fields_figure(run: Run, start_day: float, days, path: Path) -> Figure:
    """Every field at the chosen snapshot days (the middle z slice in 3D): x across, y up,
    in micrometres."""
    with run.fields() as ds:
        names = list(ds.data_vars)
        idx = _snapshot_indices(ds["time"].values, start_day, days)
        three_d = "z" in ds.dims
        sel = {"z": ds.sizes["z"] // 2} if three_d else {}
        planes = {n: [ds[n].isel(time=i, **sel).transpose("y", "x").values for i in idx] for n in names}
        units = {n: ds[n].attrs.get("units", "") for n in names}
        snap_days = [start_day + float(ds["time"].values[i]) / 1440 for i in idx]
        extent_um = extent(ds["x"].values, ds["y"].values)
    # constrained layout: titles clear of the tick labels above them, and no wide margins
    fig = Figure(figsize=(2.6 * len(idx) + 1.0, 2.3 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(idx), squeeze=False)
    for r, name in enumerate(names):
        lo, hi = colour_limits(min(float(np.nanmin(p)) for p in planes[name]),
                               max(float(np.nanmax(p)) for p in planes[name]))
        for c, plane in enumerate(planes[name]):
            ax = axes[r, c]
            im = ax.imshow(plane, origin="lower", extent=extent_um, vmin=lo, vmax=hi, cmap="viridis")
            label_axes(ax, bottom=r == len(names) - 1, left=c == 0)
            ax.set_title(f"{name}, day {snap_days[c]:.1f}", fontsize=8)
        fig.colorbar(im, ax=list(axes[r]), shrink=0.9).set_label(units[name], fontsize=7)
    fig.suptitle(f"{run.path.name}: fields" + (" (middle z slice)" if three_d else ""))
    fig.savefig(path, dpi=100)
    return fig


def cells_figure(run: Run, start_day: float, days, geometry: Geometry, path: Path) -> Figure:
    """The lattice with cells coloured by type and state (alive tumor by antigen class) at
    the chosen snapshot days (the middle z slice in 3D): x across, y up, in micrometres."""
    shape = geometry.shape
    idx = _snapshot_indices(run.cell_times, start_day, days)
    fig = Figure(figsize=(3.6 * len(idx) + 1.6, 3.9))
    axes = np.atleast_1d(fig.subplots(1, len(idx), squeeze=False)[0])
    for k, (ax, i) in enumerate(zip(axes, idx)):
        cells = run.cells(i)
        draw_cells(ax, cells, geometry)
        if k:
            ax.set_ylabel("")
        if "z" in cells:
            cells = cells[cells["z"] == shape[0] // 2]
        alive = int(((cells["type"] == 1) & (cells["state"] == 0)).sum())
        counts = ", ".join([str(alive), *(f"{int((cells['type'] == c).sum())}" for c in (2, 3, 4))])
        ax.set_title(f"day {start_day + run.cell_times[i] / 1440:.1f}\n({counts})", fontsize=8)
    fig.legend(handles=legend_handles(), loc="center right", fontsize=7)
    fig.suptitle(f"{run.path.name}: cells" + (" (middle z slice)" if len(shape) == 3 else "")
                 + "; counts alive tumor, CAR T, monocytes, granulocytes", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (3.6 * len(idx) + 1.6), 1))
    fig.savefig(path, dpi=110)
    return fig


def antigen_figure(run: Run, ts, start_day: float, path: Path) -> None:
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    a = run.config.tumor.antigen
    classes = [("tumor_antigen_negative", f"negative (< {a.negative_below:g})"),
               ("tumor_antigen_low", f"low (< {a.high_from:g})"), ("tumor_antigen_high", "high")]
    alive = ts["tumor_alive"].to_numpy()
    fractions = [np.divide(ts[c].to_numpy(), alive, out=np.zeros_like(alive), where=alive > 0) for c, _ in classes]
    left.stackplot(ts["day"], *fractions, labels=[lab for _, lab in classes],
                   colors=[COLOURS[f"tumor, antigen {c}"] for c in ("negative", "low", "high")])
    left.set_ylim(0, 1)
    left.set_xlabel("day (relative to infusion)")
    left.set_ylabel("fraction of alive tumor cells")
    left.legend(fontsize=8, loc="lower left")
    mark_events(left, run.events)
    times = run.cell_times
    bins = np.linspace(0, 1, 21)
    for i in _snapshot_indices(times, start_day, None):
        cells = run.cells(i)
        ag = cells.loc[(cells["type"] == 1) & (cells["state"] == 0), "antigen"].to_numpy()
        if len(ag):
            right.hist(ag, bins=bins, histtype="step", density=True,
                       label=f"day {start_day + times[i] / 1440:.1f} (n={len(ag)})")
    right.set_xlabel("antigen density (alive tumor cells)")
    right.set_ylabel("density")
    right.legend(fontsize=8)
    fig.suptitle(f"{run.path.name}: antigen distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(run_path, out_dir, days=None) -> list[Path]:
    """Write the report of ``run_path`` into ``out_dir``; returns the files written.

    Args:
        days: snapshot days (relative to infusion) for the field and cell figures;
            default the first, middle and last snapshot.
    """
    run = open_run(run_path)
    cfg = run.config
    ts = run.timeseries
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: is a file; --out names the folder the report is written into")
    out.mkdir(parents=True, exist_ok=True)
    files = {"populations": out / "populations.png", "systemic": out / "systemic.png",
             "fields": out / "fields.png", "cells": out / "cells.png", "antigen": out / "antigen.png"}
    if len(ts) == 0:
        raise RunFileError(f"{run.path}: holds no time-series rows yet; nothing to report")
    populations_figure(run, ts, files["populations"])
    systemic_figure(run, ts, files["systemic"])
    fields_figure(run, cfg.start_day, days, files["fields"])
    cells_figure(run, cfg.start_day, days, Geometry.of(cfg), files["cells"])
    antigen_figure(run, ts, cfg.start_day, files["antigen"])
    _, text = summarize_run(run)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.html").write_text(_html(run, text, files))
    return [*files.values(), out / "summary.txt", out / "summary.html"]


def _html(run: Run, text: str, files: dict[str, Path]) -> str:
    def details(e: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("day", "kind", "time_min", "event"))

    rows = "".join(f"<tr><td>{html.escape(str(e['day']))}</td><td>{html.escape(e['kind'])}</td>"
                   f"<td>{html.escape(details(e))}</td></tr>" for e in run.events)
    figs = "".join(f'<h2>{name}</h2><img src="{p.name}" style="max-width:100%">' for name, p in files.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.path.name)}</title>"
            f"</head><body><h1>{html.escape(run.path.name)}</h1><pre>{html.escape(text)}</pre>"
            f"<h2>therapy events</h2><table border=1 cellpadding=3><tr><th>day</th><th>kind</th><th>details</th>"
            f"</tr>{rows}</table>{figs}</body></html>\n")
