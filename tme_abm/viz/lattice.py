"""Drawing the lattice: cells coloured by type and state (alive tumor by antigen class)
and a field as a heatmap, x across and y up in micrometres. Shared by the report
(``tme-abm report``) and the web view (``tme-abm view``) so both draw one picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch


@dataclass(frozen=True)
class Geometry:
    """What drawing a run's lattice needs from its config: the shape (C order, sites),
    the site spacing (um) and the antigen densities that bound the antigen classes of
    alive tumor cells (``tumor.antigen.negative_below`` and ``high_from``)."""

    shape: tuple[int, ...]
    spacing_um: float
    negative_below: float
    high_from: float

    @classmethod
    def of(cls, cfg) -> Geometry:
        """The geometry of a :class:`~tme_abm.config.Config`."""
        a = cfg.tumor.antigen
        return cls(tuple(cfg.lattice.shape), cfg.lattice.spacing_um, a.negative_below, a.high_from)

CELL_CLASSES: list[tuple[str, str, int, int | None]] = [
    # (label, colour, type code, state code or None for any state)
    ("tumor, antigen high", "#7f7f7f", 1, 0),
    ("tumor, antigen low", "#ff9896", 1, 0),
    ("tumor, antigen negative", "#9467bd", 1, 0),
    ("tumor necrotic", "#3b1f0b", 1, 1),
    ("tumor apoptotic", "#c5b0d5", 1, 2),
    ("tumor killed", "#d62728", 1, 3),
    ("CAR T effector", "#1f77b4", 2, 0),
    ("CAR T engaged", "#17becf", 2, 1),
    ("CAR T exhausted", "#aec7e8", 2, 2),
    ("monocyte", "#ff7f0e", 3, 0),
    ("monocyte activated", "#8c564b", 3, 1),
    ("granulocyte", "#2ca02c", 4, None),
]
"""What the lattice picture shows, in drawing order, with its colour."""

COLOURS = {label: colour for label, colour, _, _ in CELL_CLASSES}


def _members(cells: pd.DataFrame, label: str, code: int, state: int | None, geometry: Geometry) -> np.ndarray:
    """Boolean mask of the rows of ``cells`` in one class of :data:`CELL_CLASSES`."""
    m = cells["type"].to_numpy() == code
    if state is not None:
        m &= cells["state"].to_numpy() == state
    if label.startswith("tumor, antigen"):
        ag = cells["antigen"].to_numpy()
        lo, hi = geometry.negative_below, geometry.high_from
        m &= {"high": ag >= hi, "low": (ag >= lo) & (ag < hi), "negative": ag < lo}[label.rsplit(" ", 1)[1]]
    return m


def cell_image(cells: pd.DataFrame, geometry: Geometry) -> np.ndarray:
    """(ny, nx, 3) RGB raster of one plane of cells, indexed [y, x] (white: empty).

    Args:
        cells: a cell table (:meth:`tme_abm.Run.cells` columns ``y``, ``x``, ``type``,
            ``state``, ``antigen``) of one plane."""
    ny, nx = geometry.shape[-2:]
    img = np.ones((ny, nx, 3))
    y, x = cells["y"].to_numpy(), cells["x"].to_numpy()
    for label, colour, code, state in CELL_CLASSES:
        m = _members(cells, label, code, state, geometry)
        img[y[m], x[m]] = to_rgb(colour)
    return img


def legend_handles() -> list[Patch]:
    return [Patch(color=colour, label=label) for label, colour, _, _ in CELL_CLASSES]


def extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of voxels centred at ``x`` and ``y`` (um)."""
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) if len(y) > 1 else 1.0
    return float(x[0]) - dx / 2, float(x[-1]) + dx / 2, float(y[0]) - dy / 2, float(y[-1]) + dy / 2


def label_axes(ax, bottom: bool = True, left: bool = True) -> None:
    ax.tick_params(labelsize=6)
    if bottom:
        ax.set_xlabel("x (um)", fontsize=7)
    if left:
        ax.set_ylabel("y (um)", fontsize=7)


def draw_cells(ax, cells: pd.DataFrame, geometry: Geometry, z: int | None = None) -> None:
    """Draw the cells of one plane on ``ax``: the plane ``z`` of a 3D lattice (default its
    middle), the whole lattice in 2D."""
    shape, spacing_um = geometry.shape, geometry.spacing_um
    if len(shape) == 3:
        z = shape[0] // 2 if z is None else z
        cells = cells[cells["z"] == z]
    ny, nx = shape[-2], shape[-1]
    ax.imshow(cell_image(cells, geometry), origin="lower", interpolation="nearest",
              extent=extent(np.arange(nx) * spacing_um, np.arange(ny) * spacing_um))
    label_axes(ax)


def colour_limits(lo: float, hi: float) -> tuple[float, float]:
    """The colour scale of values from ``lo`` to ``hi``; a uniform field (``hi == lo``)
    gets 5% of its value either side (or +-1 at zero), so it is drawn in the middle
    colour and its colour bar reads the value, not an offset on a 1e-12 span."""
    if hi > lo:
        return lo, hi
    pad = 0.05 * abs(lo) or 1.0
    return lo - pad, lo + pad


def draw_field(ax, plane: np.ndarray, spacing_um: float, vmin: float | None = None, vmax: float | None = None):
    """Draw one field plane ``(ny, nx)`` as a heatmap on ``ax``; returns the image."""
    ny, nx = plane.shape
    lo, hi = colour_limits(float(np.nanmin(plane)) if vmin is None else vmin,
                           float(np.nanmax(plane)) if vmax is None else vmax)
    im = ax.imshow(plane, origin="lower", cmap="viridis", vmin=lo, vmax=hi,
                   extent=extent(np.arange(nx) * spacing_um, np.arange(ny) * spacing_um))
    label_axes(ax)
    return im
