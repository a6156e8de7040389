"""Run files keep the conventions users' tools rely on: lattice axes named in C order
([z,] y, x) wherever they appear (the file, xarray, cell tables, report figures)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr
from matplotlib.colors import to_rgb

import tme_abm
from tme_abm.config import validate_config
from tme_abm.io import run
from tme_abm.viz.report import TYPE_COLOURS, cells_figure, fields_figure

SPACING = 20.0
# A lesion placed off-centre in x on a lattice longer in x than in y (and in z): a
# transposed axis puts it somewhere else.
LESIONS = {
    "2d": {"shape": [30, 50], "center": [15, 10], "radius": 4},
    "3d": {"shape": [12, 16, 24], "center": [6, 8, 5], "radius": 3},
}


@pytest.fixture(scope="module", params=list(LESIONS))
def lesion_run(request, tmp_path_factory):
    les = LESIONS[request.param]
    cfg = validate_config({
        "name": f"offcentre_{request.param}", "seed": 3, "backend": "numpy",
        "lattice": {"dims": len(les["shape"]), "shape": les["shape"], "spacing_um": SPACING,
                    "vessels": {"layout": "none"}},
        "time": {"tick_min": 6, "duration_days": 0.1},
        "fields": {"oxygen": {"boundary": {"default": {"kind": "dirichlet", "value": 38}}}},
        "tumor": {"archetype": "solid", "radius_sites": les["radius"], "center_sites": les["center"]},
        "output": {"snapshot_every_min": 60, "cell_snapshot_every_min": 60},
    })
    path = tmp_path_factory.mktemp("lesion") / "lesion.h5"
    run(cfg, path, quiet=True)
    return les, path, cfg


def test_fields_are_written_with_c_order_dimension_names(lesion_run):
    les, path, _ = lesion_run
    names = ("z", "y", "x")[3 - len(les["shape"]):]
    with h5py.File(path, "r") as f:
        ds = f["fields/oxygen"]
        assert ds.shape[1:] == tuple(les["shape"])
        assert [ds.dims[i + 1][0].name for i in range(len(names))] == [f"/fields/{a}" for a in names]
        for a, n in zip(names, les["shape"]):
            assert f["fields"][a].shape == (n,)


def test_xarray_finds_the_lesion_where_the_config_put_it(lesion_run):
    les, path, _ = lesion_run
    with xr.open_dataset(path, engine="h5netcdf", group="fields") as fs:
        oxy = fs["oxygen"].isel(time=-1)
        names = ("z", "y", "x")[3 - len(les["shape"]):]
        assert oxy.dims == names and dict(oxy.sizes) == dict(zip(names, les["shape"]))
        low = oxy.where(oxy == oxy.min(), drop=True)  # the lesion's core consumes most oxygen
        for a, c in zip(names, les["center"]):
            assert float(low[a].mean()) == pytest.approx(c * SPACING, abs=1.5 * SPACING), a
    cells = tme_abm.open_run(path).cells(0)
    tumor = cells[cells["type"] == 1]
    for a, c in zip(names, les["center"]):
        assert tumor[a].mean() == pytest.approx(c, abs=0.5), a
        assert tumor[a].max() - tumor[a].min() == 2 * les["radius"], a


def test_report_figures_draw_x_across_and_y_up_in_micrometres(lesion_run, tmp_path):
    les, path, cfg = lesion_run
    r = tme_abm.open_run(path)
    y_c, x_c = les["center"][-2] * SPACING, les["center"][-1] * SPACING

    fig = cells_figure(r, cfg.start_day, [0.0], cfg.lattice.shape, SPACING, tmp_path / "cells.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x (um)" and ax.get_ylabel() == "y (um)"
    img = ax.images[0]
    rgb = np.asarray(img.get_array())
    left, right, bottom, top = img.get_extent()
    assert rgb.shape[:2] == tuple(les["shape"][-2:])  # rows are y, columns x
    rows, cols = np.nonzero(np.all(np.isclose(rgb, to_rgb(TYPE_COLOURS[1])), axis=-1))
    px = (right - left) / rgb.shape[1]
    assert left + (cols.mean() + 0.5) * px == pytest.approx(x_c, abs=SPACING)
    assert bottom + (rows.mean() + 0.5) * px == pytest.approx(y_c, abs=SPACING)

    fig = fields_figure(r, cfg.start_day, None, tmp_path / "fields.png")
    ax = [a for a in fig.axes if a.get_title().startswith("oxygen") and a.images][-1]  # the last snapshot
    img = ax.images[0]
    plane = np.asarray(img.get_array())
    left, right, bottom, top = img.get_extent()
    i, j = np.unravel_index(np.argmin(plane), plane.shape)
    assert left + (j + 0.5) * (right - left) / plane.shape[1] == pytest.approx(x_c, abs=1.5 * SPACING)
    assert bottom + (i + 0.5) * (top - bottom) / plane.shape[0] == pytest.approx(y_c, abs=1.5 * SPACING)
