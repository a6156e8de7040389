"""The web view's matplotlib figures, drawn on the Agg canvas from plain data so that a
run file and a live model draw the same pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..lattice import Geometry, draw_cells, draw_field, legend_handles
from ..report import mark_events

MARKER = "#e377c2"
"""Colour of the time marker on the time series."""


def frame_figure(cells: pd.DataFrame | None, cells_title: str, plane: np.ndarray | None, field_title: str,
                 units: str, geometry: Geometry, z: int | None = None) -> Figure:
    """The lattice (cells by type and state) and one field plane side by side.

    Args:
        cells: a cell table (:meth:`tme_abm.Run.cells` columns), or None before the
            first snapshot; plane: ``(ny, nx)`` field values, or None; geometry: the
            run's lattice (:class:`~tme_abm.viz.lattice.Geometry`); z: the plane of a 3D
            lattice (default its middle).
    """
    shape = geometry.shape
    if len(shape) == 3 and z is None:
        z = shape[0] // 2
    fig = Figure(figsize=(10.5, 4.2))
    left, right = fig.subplots(1, 2)
    for ax, title, missing in ((left, cells_title, cells is None), (right, field_title, plane is None)):
        ax.set_title(title + (f", z plane {z}" if len(shape) == 3 else ""), fontsize=9)
        if missing:
            ax.text(0.5, 0.5, "no snapshot yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    if cells is not None:
        draw_cells(left, cells, geometry, z)
    if plane is not None:
        im = draw_field(right, plane, geometry.spacing_um)
        fig.colorbar(im, ax=right, shrink=0.85).set_label(units, fontsize=8)
    fig.legend(handles=legend_handles(), loc="center left", fontsize=6.5, bbox_to_anchor=(0.0, 0.5))
    fig.subplots_adjust(left=0.2, right=0.95, wspace=0.3)
    return fig


def timeseries_figure(ts: pd.DataFrame, events: list[dict], day: float | None) -> Figure:
    """Populations on the lattice, the patient's burden and blood CAR T, and the systemic
    cytokine with the CRS grade, over days relative to infusion; therapy events dashed
    and the time shown by the view as a vertical line."""
    fig = Figure(figsize=(10.5, 6.6))
    pops, patient, cyto = fig.subplots(3, 1, sharex=True)
    if len(ts):
        d = ts["day"].to_numpy(float)
        for col, label in (("tumor_alive", "tumor alive"), ("tumor_necrotic", "tumor necrotic"),
                           ("car_t_effector", "CAR T effector"), ("car_t_exhausted", "CAR T exhausted"),
                           ("monocytes", "monocytes"), ("granulocytes", "granulocytes")):
            y = ts[col].to_numpy(float)
            if (y > 0).any():
                pops.plot(d, np.where(y > 0, y, np.nan), label=label, lw=1.2)
        for col, label in (("burden", "tumor burden"), ("blood_car_t", "blood CAR T")):
            y = ts[col].to_numpy(float)
            if (y > 0).any():
                patient.plot(d, np.where(y > 0, y, np.nan), label=label, lw=1.2)
        cyto.plot(d, ts["systemic_cytokine"].to_numpy(float), color="tab:red", label="systemic cytokine")
        grade = cyto.twinx()
        grade.step(d, ts["crs_grade"].to_numpy(float), where="post", color="k", lw=1, label="CRS grade")
        grade.set_ylim(-0.2, 4.5)
        grade.set_yticks(range(5))
        grade.set_ylabel("CRS grade", fontsize=8)
    for ax, ylabel, log in ((pops, "cells on the lattice", True), (patient, "cells (patient)", True),
                            (cyto, "cytokine (pg/mL)", False)):
        if log and ax.lines:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        mark_events(ax, events)
        if day is not None:
            ax.axvline(day, color=MARKER, lw=2)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    cyto.set_xlabel("day (relative to infusion)")
    fig.tight_layout()
    return fig


def timecourse_figure(tc: pd.DataFrame, names: list[str]) -> Figure:
    """Per series, every arm's median with its interquartile band over days."""
    series = list(dict.fromkeys(tc["series"]))
    fig = Figure(figsize=(10.5, 2.6 * max(len(series), 1)))
    axes = np.atleast_1d(fig.subplots(max(len(series), 1), 1, sharex=True, squeeze=False)[:, 0])
    for ax, s in zip(axes, series):
        for arm in names:
            g = tc[(tc["series"] == s) & (tc["arm"] == arm)]
            if g.empty:
                continue
            line, = ax.plot(g["day"], g["median"], label=arm, lw=1.3)
            ax.fill_between(g["day"], g["q25"], g["q75"], color=line.get_color(), alpha=0.2)
        positive = (tc.loc[tc["series"] == s, "median"] > 0).any()
        if s in ("burden_relative", "blood_car_t", "car_t_on_lattice") and positive:
            ax.set_yscale("log")
        ax.set_ylabel(s.replace("_", " "), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("day (relative to infusion)")
    fig.tight_layout()
    return fig
