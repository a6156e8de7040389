"""The web view's Solara components: one run (:func:`RunView`), a folder of runs, a sweep
or an experiment (:func:`FolderView`), and the pieces they share with the live model
(:func:`FramePanel`, :func:`TimeSeriesPanel`, :func:`OutcomesTable`).

Each picture sits in a ``Div`` with a ``tme-*`` class (``tme-lattice``,
``tme-timeseries``, ``tme-time``, ``tme-outcomes``, ``tme-arms``, ``tme-runs``,
``tme-run-title``, ``tme-error``) so a browser test can find it.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import solara

from ...io.readers import fmt_value
from ...io.runfile import RunFileError
from ...studies.errors import SweepError
from ..lattice import Geometry
from .data import FolderRuns, RunFrames, ViewError, is_run_file, resolve_under
from .figures import frame_figure, timecourse_figure, timeseries_figure


def Heading(text: str, level: int = 3, classes: list[str] | None = None):
    """A heading (plain HTML: Solara's Markdown would load KaTeX, which the offline
    assets do not ship)."""
    return solara.HTML(tag=f"h{level}", unsafe_innerHTML=html.escape(text), classes=classes or [])


def Table(df: pd.DataFrame, classes: list[str]):
    """A small table (numbers to 4 significant digits), escaped."""
    text = df.astype(object).map(fmt_value).to_html(index=False, escape=True, border=0)
    return solara.HTML(tag="div", unsafe_innerHTML=text, classes=classes, style={"overflow-x": "auto"})


@solara.component
def ErrorLine(message: str):
    solara.Div(children=[solara.Error(message)], classes=["tme-error"])


@solara.component
def FramePanel(cells, cells_title: str, plane, field_title: str, units: str, geometry: Geometry, z: int | None):
    """The lattice and one field plane side by side (:func:`frame_figure`)."""
    fig = frame_figure(cells, cells_title, plane, field_title, units, geometry, z)
    solara.Div(children=[solara.FigureMatplotlib(fig, format="png")], classes=["tme-lattice"])


@solara.component
def TimeSeriesPanel(ts: pd.DataFrame, events: list[dict], day: float | None):
    """Populations, the patient and CRS over time, the view's time marked (:func:`timeseries_figure`)."""
    fig = timeseries_figure(ts, events, day)
    solara.Div(children=[solara.FigureMatplotlib(fig, format="png")], classes=["tme-timeseries"])


@solara.component
def OutcomesTable(outcomes: dict):
    if not outcomes:
        solara.Div(children=[solara.Text("no outcomes yet (the run has not completed)")], classes=["tme-outcomes"])
        return
    Table(pd.DataFrame({"outcome": list(outcomes), "value": list(outcomes.values())}), ["tme-outcomes"])


@solara.component
def FieldControls(names: list[str], field: str, set_field, shape, z: int, set_z):
    """The field picker and, in 3D, the z-plane slider."""
    with solara.Row():
        solara.Select("field", values=names, value=field, on_value=set_field)
        if len(shape) == 3:
            solara.SliderInt("z plane", value=z, on_value=set_z, min=0, max=shape[0] - 1)


@solara.component
def RunView(path: Path):
    """One run file: a time slider over its snapshots, the lattice and a field at that
    time, the time series with the time marked, the events and the outcomes."""
    version, set_version = solara.use_state(0)

    def load():
        try:
            return RunFrames(path)
        except (RunFileError, ViewError) as exc:
            return str(exc)

    frames = solara.use_memo(load, [str(path), version])
    index, set_index = solara.use_state(0)
    field, set_field = solara.use_state("")
    z, set_z = solara.use_state(-1)
    if isinstance(frames, str):
        ErrorLine(frames)
        return
    times = frames.times_min
    field = field if field in frames.field_names else (frames.field_names[0] if frames.field_names else "")
    zz = (z if z >= 0 else frames.shape[0] // 2) if len(frames.shape) == 3 else None
    with solara.Column():
        Heading(f"{frames.run.path.name}: status {frames.status}"
                + (" (being written or killed: shown read-only up to its last flush)"
                   if frames.status == "running" else ""), classes=["tme-run-title"])
        if frames.status == "running":
            solara.Button("reload", on_click=lambda: set_version(version + 1))
        if len(times) == 0:
            solara.Text("no snapshots yet")
            return
        i = min(index, len(times) - 1)
        t = float(times[i])
        solara.SliderInt("snapshot", value=i, on_value=set_index, min=0, max=len(times) - 1)
        solara.Div(children=[solara.Text(f"day {frames.day(t):.2f} (time {t:g} min)")], classes=["tme-time"])
        FieldControls(frames.field_names, field, set_field, frames.shape, zz if zz is not None else 0, set_z)
        try:
            cells = frames.cells_at(t)
            plane = frames.field_at(field, t, zz) if field else None
        except RunFileError as exc:  # a file changed or damaged since it was opened
            ErrorLine(str(exc))
            return
        FramePanel(cells[0] if cells else None,
                   f"cells, day {frames.day(cells[1]):.2f}" if cells else "cells",
                   plane[0] if plane else None,
                   f"{field}, day {frames.day(plane[1]):.2f}" if plane else field,
                   frames.field_units.get(field, ""), frames.geometry, zz)
        TimeSeriesPanel(frames.timeseries, frames.events, frames.day(t))
        Heading("therapy events", 4)
        if frames.events:
            Table(pd.DataFrame(frames.events), ["tme-events"])
        else:
            solara.Text("none")
        Heading("outcomes", 4)
        OutcomesTable(frames.outcomes)


RUN_COLUMNS = ["path", "arm", "seed", "response_at_end", "max_crs_grade", "burden_ratio_at_end",
               "peak_blood_car_t", "antigen_negative_fraction_end"]
ARM_COLUMNS = ["arm", "runs", "failed", "response_rate", "response_rate_ci_low", "response_rate_ci_high",
               "severe_crs_rate", "severe_crs_rate_ci_low", "severe_crs_rate_ci_high", "peak_blood_car_t_median"]


@solara.component
def FolderView(root: Path):
    """A folder of runs, a sweep or an experiment: per-arm rates with 95% intervals,
    time courses per arm, the runs' outcomes (filtered and sorted), and any run opened
    as in :func:`RunView`."""

    def load():
        try:
            return FolderRuns(root)
        except (RunFileError, SweepError, ViewError) as exc:
            return str(exc)

    data = solara.use_memo(load, [str(root)])
    arm, set_arm = solara.use_state("all arms")
    text, set_text = solara.use_state("")
    sort, set_sort = solara.use_state("path")
    descending, set_descending = solara.use_state(False)
    opened, set_opened = solara.use_state("")
    if isinstance(data, str):
        ErrorLine(data)
        return
    runs = data.runs
    with solara.Column():
        Heading(f"{data.root.name}: {data.kind}, {len(runs)} complete runs, {int(data.failed.sum())} not complete")
        Heading("arms (rates with Wilson 95% intervals)", 4)
        Table(data.arms[ARM_COLUMNS], ["tme-arms"])
        if len(runs):
            fig = timecourse_figure(data.timecourses(), data.names)
            solara.Div(children=[solara.FigureMatplotlib(fig, format="png")], classes=["tme-timecourses"])
        if len(data.problems):
            Heading("not complete (not opened, unreadable, failed or running)", 4)
            Table(data.problems, ["tme-problems"])
        Heading("runs (a cell's menu opens its run)", 4)
        columns = [c for c in RUN_COLUMNS if c in runs]
        with solara.Row():
            solara.Select("arm", values=["all arms", *data.names], value=arm, on_value=set_arm)
            solara.InputText("path contains", value=text, on_value=set_text, continuous_update=True)
            solara.Select("sort by", values=columns, value=sort, on_value=set_sort)
            solara.Checkbox(label="descending", value=descending, on_value=set_descending)
        shown = runs if arm == "all arms" else runs[runs["arm"] == arm]
        shown = shown[shown["path"].astype(str).str.contains(text, regex=False)]
        shown = shown.sort_values(sort if sort in columns else "path", ascending=not descending)
        shown = shown.reset_index(drop=True)
        open_run = solara.CellAction(name="open this run", icon="mdi-open-in-app",
                                     on_click=lambda _column, row: set_opened(str(shown["path"].iloc[int(row)])))
        solara.Div(children=[solara.DataFrame(shown[columns], items_per_page=20, scrollable=True,
                                              cell_actions=[open_run])], classes=["tme-runs"])
        Heading("open a run", 4)
        solara.InputText("path under this folder", value=opened, on_value=set_opened)
        if opened:
            try:
                target = resolve_under(data.root, opened)
                if not is_run_file(target):
                    raise ViewError(f"{opened}: not a run file (*.h5)")
            except ViewError as exc:
                ErrorLine(str(exc))
            else:
                RunView(target)


@solara.component
def PathView(root: Path):
    """What ``tme-abm view PATH`` shows: a run file, or a folder."""
    if is_run_file(root):
        RunView(root)
    elif root.is_dir():
        FolderView(root)
    else:
        ErrorLine(f"{root}: neither a run file (*.h5) nor a folder")
