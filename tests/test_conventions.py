"""Run files keep the conventions users' tools rely on: lattice axes named in C order
([z,] y, x) wherever they appear (the file, xarray, cell tables, report figures), and
CF attributes (UDUNITS units, long names, Conventions) that a netCDF-C client and
xarray read.

The netCDF-C and UDUNITS-2 command-line tools (Debian's netcdf-bin and udunits-bin) are
installed by .ci/run, which sets TME_ABM_REQUIRE_TOOLS=1 so that their tests cannot be
skipped there."""

from __future__ import annotations

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import xarray as xr
from matplotlib.colors import to_rgb

import tme_abm
from tme_abm.config import validate_config
from tme_abm.io import run
from tme_abm.viz.lattice import COLOURS, Geometry
from tme_abm.viz.report import cells_figure, fields_figure

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
        "fields": {"oxygen": {"boundary": {"default": {"kind": "dirichlet", "value": 46}}}},
        "tumor": {"archetype": "solid", "radius_sites": les["radius"], "center_sites": les["center"]},
        "output": {"snapshot_every_min": 60, "cell_snapshot_every_min": 60},
    })
    path = tmp_path_factory.mktemp("lesion") / "lesion.h5"
    run(cfg, path, quiet=True)
    return les, path, cfg


@pytest.mark.slow
def test_fields_are_written_with_c_order_dimension_names(lesion_run):
    les, path, _ = lesion_run
    names = ("z", "y", "x")[3 - len(les["shape"]):]
    with h5py.File(path, "r") as f:
        ds = f["fields/oxygen"]
        assert ds.shape[1:] == tuple(les["shape"])
        assert [ds.dims[i + 1][0].name for i in range(len(names))] == [f"/fields/{a}" for a in names]
        for a, n in zip(names, les["shape"]):
            assert f["fields"][a].shape == (n,)


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_figures_draw_x_across_and_y_up_in_micrometres(lesion_run, tmp_path):
    les, path, cfg = lesion_run
    r = tme_abm.open_run(path)
    y_c, x_c = les["center"][-2] * SPACING, les["center"][-1] * SPACING

    fig = cells_figure(r, cfg.start_day, [0.0], Geometry.of(cfg), tmp_path / "cells.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x (um)" and ax.get_ylabel() == "y (um)"
    img = ax.images[0]
    rgb = np.asarray(img.get_array())
    left, right, bottom, top = img.get_extent()
    assert rgb.shape[:2] == tuple(les["shape"][-2:])  # rows are y, columns x
    rows, cols = np.nonzero(np.all(np.isclose(rgb, to_rgb(COLOURS["tumor, antigen high"])), axis=-1))
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


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("TME_ABM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is required here (TME_ABM_REQUIRE_TOOLS=1) but not on PATH")
        pytest.skip(f"{name} not on PATH (Debian: netcdf-bin, udunits-bin)")
    return path


@pytest.mark.slow
def test_ncdump_reads_the_header_with_c_order_axes_and_cf_attributes(lesion_run):
    les, path, _ = lesion_run
    out = subprocess.run([_tool("ncdump"), "-h", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    dims = ", ".join(("z", "y", "x")[3 - len(les["shape"]):])
    assert ':Conventions = "CF-1.10"' in out.stdout
    assert f"float oxygen(time, {dims}) ;" in out.stdout
    assert 'oxygen:units = "mmHg" ;' in out.stdout and 'adenosine:units = "umol/L" ;' in out.stdout
    assert 'x:units = "um" ;' in out.stdout and 'tumor_alive:units = "1" ;' in out.stdout
    assert 'type:flag_meanings = "tumor car_t monocyte granulocyte" ;' in out.stdout


@pytest.mark.slow
def test_every_variable_has_a_long_name_and_udunits_units(lesion_run):
    """Every variable of the data groups has a long_name; every one but the cell type,
    state and ids has units that UDUNITS-2 parses."""
    _, path, _ = lesion_run
    udunits = _tool("udunits2")
    found: dict[str, dict] = {}
    with h5py.File(path, "r") as f:
        for group in ("timeseries", "fields", "cells"):
            for name, ds in f[group].items():
                if name not in ("cell",):  # a dimension without a variable
                    found[f"{group}/{name}"] = {k: (v.decode() if isinstance(v, bytes) else v)
                                                for k, v in ds.attrs.items()}
        found["events"] = dict(f["events"].attrs)
        assert f.attrs["Conventions"] == "CF-1.10" and str(f.attrs["title"]).startswith("tme_abm run")
    assert len(found) > 60
    no_units = {k for k, a in found.items() if "units" not in a}
    assert no_units == {"cells/type", "cells/state", "cells/id", "cells/lineage", "events"}
    assert all(a.get("long_name") for a in found.values()), [k for k, a in found.items() if not a.get("long_name")]
    for units in sorted({str(a["units"]) for a in found.values() if "units" in a}):
        r = subprocess.run([udunits, "-H", units, "-W", ""], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{units!r} is not UDUNITS-2: {r.stderr.strip()}"


@pytest.mark.slow
def test_xarray_reads_cf_units_and_keeps_numbers_as_numbers(lesion_run):
    """CF-aware decoding leaves the time series numeric (no unit is a time unit xarray
    would turn into timedeltas) and shows units and long names."""
    _, path, _ = lesion_run
    with xr.open_dataset(path, engine="h5netcdf", group="timeseries") as ts:
        assert ts["time"].dtype == np.float64 and ts["day"].dtype == np.float64
        assert ts["tumor_alive"].attrs == {"units": "1", "long_name": "alive tumor cells on the lattice"}
        assert ts["adenosine_mean"].attrs["units"] == "umol/L"
    with xr.open_dataset(path, engine="h5netcdf", group="cells") as cs:
        assert list(cs["type"].attrs["flag_values"]) == [1, 2, 3, 4]
