"""Run files: round trip, xarray, crash safety and resume, clear errors, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from helpers import BASELINE, ROOT, SMALL, assert_same_run, cli, fail_at_tick, small
from matplotlib.image import imread

import tme_abm
from tme_abm.config import load_config
from tme_abm.io import RunFileError, run
from tme_abm.io.runfile import CELL_COLUMNS, RunFile
from tme_abm.model import TMEModel, cell_table


@pytest.mark.slow
def test_round_trip_of_every_array_written_by_the_model(reference):
    """Step the same config by hand and compare every row, snapshot and outcome the
    file holds with what the model produced."""
    cfg = small()
    m = TMEModel(cfg)
    rows, fields, cells = [m.current_row()], [(m.time_min, m.fields.values[:, 0].copy())], [(m.time_min, cell_table(m))]
    for tick in range(1, cfg.time.n_ticks + 1):
        m.step()
        rows.append(m.current_row())
        if tick % 40 == 0 or tick == cfg.time.n_ticks:
            fields.append((m.time_min, m.fields.values[:, 0].copy()))
        if tick % 80 == 0 or tick == cfg.time.n_ticks:
            cells.append((m.time_min, cell_table(m)))
    r = tme_abm.open_run(reference)
    assert r.status == "complete" and r.attrs["seed"] == cfg.seed and r.config == cfg
    ts = r.timeseries
    assert list(ts["tick"]) == list(range(cfg.time.n_ticks + 1))
    for k in rows[0]:
        assert np.array_equal(ts[k].to_numpy(), [row[k] for row in rows]), k
    assert np.array_equal(r.field_times, [t for t, _ in fields])
    for i, (_, v) in enumerate(fields):
        for j, name in enumerate(m.fields.names):
            assert np.array_equal(r.field(name, i), v[j]), (name, i)
    assert np.array_equal(r.cell_times, [t for t, _ in cells])
    for i, (_, table) in enumerate(cells):
        got = r.cells(i)
        assert set(got.columns) == set(table)
        for k in table:
            assert np.array_equal(got[k].to_numpy(), table[k], equal_nan=True), (k, i)
    assert [e["kind"] for e in r.events] == ["lymphodepletion", "infusion"]
    assert r.events == json.loads(json.dumps(m.event_log))
    assert json.dumps(r.outcomes, sort_keys=True) == json.dumps(m.outcomes(), sort_keys=True)


@pytest.mark.slow
def test_output_writers_follow_their_schedules(tmp_path):
    """Rows every 7 ticks, field and cell snapshots every 10 and 20 ticks, checkpoints every
    10: each at tick 0 and, but for the checkpoint, at the last tick (24) as well."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        "time.duration_days=0.1", "backend=numpy", "output.record_every_ticks=7", "output.snapshot_every_min=60",
        "output.cell_snapshot_every_min=120", "output.checkpoint_every_min=60"])
    path = run(cfg, tmp_path / "s.h5", quiet=True)
    r = tme_abm.open_run(path)
    assert list(r.timeseries["tick"]) == [0, 7, 14, 21, 24]
    assert list(r.field_times / 6) == [0, 10, 20, 24] and list(r.cell_times / 6) == [0, 20, 24]
    with h5py.File(path, "r") as f:
        assert f["checkpoint"].attrs["tick"] == 20


def test_writer_round_trip_of_synthetic_arrays(tmp_path):
    """Arrays with edge values (NaN, inf, negative, empty snapshots) come back exactly."""
    rng = np.random.default_rng(3)
    w = RunFile.create(tmp_path / "w.h5", config_yaml=small().to_yaml(), attrs={"seed": 1},
                         lattice_shape=(5, 4, 3), spacing_um=10.0, field_names=["a", "b"],
                         field_units=["uM", "mmHg"], dtype="float64")
    rows = [{"tick": float(i), "time_min": 6.0 * i, "a_mean": v, "tumor_alive": float(i)}
            for i, v in enumerate([0.5, np.nan, np.inf, -2.0])]
    for r in rows:
        w.append_row(r, {"a": "uM"})
    snaps = [rng.normal(size=(2, 5, 4, 3)) for _ in range(3)]
    tables = []
    for i, s in enumerate(snaps):
        w.snapshot_fields(10.0 * i, ["a", "b"], s)
        n = [4, 0, 7][i]
        t = {k: rng.integers(0, 5, n).astype(dt) for k, dt in CELL_COLUMNS.items()}
        t["antigen"][: n // 2] = np.nan
        tables.append(t)
        w.snapshot_cells(10.0 * i, t)
    w.write_events([{"day": -3.0, "kind": "x"}, {"day": 0.0, "kind": "y", "dose_cells": 1e8}])
    w.write_outcomes({"response_at_end": "PR", "time_to_progression_days": np.nan, "max_crs_grade": 2})
    w.finish()
    r = tme_abm.open_run(tmp_path / "w.h5")
    for k in rows[0]:
        assert np.array_equal(r.timeseries[k].to_numpy(), [row[k] for row in rows], equal_nan=True), k
    for i, s in enumerate(snaps):
        assert np.array_equal(r.field("a", i), s[0]) and np.array_equal(r.field("b", i), s[1])
        got = r.cells(i)
        for k, v in tables[i].items():
            assert np.array_equal(got[k].to_numpy(), v, equal_nan=True) and got[k].dtype == v.dtype, k
    assert r.events[1] == {"day": 0.0, "kind": "y", "dose_cells": 1e8}
    o = r.outcomes
    assert o["response_at_end"] == "PR" and np.isnan(o["time_to_progression_days"]) and o["max_crs_grade"] == 2


@pytest.mark.slow
def test_xarray_opens_groups_with_named_dimensions_and_units(reference):
    ts = xr.open_dataset(reference, engine="h5netcdf", group="timeseries")
    assert ts["tumor_alive"].dims == ("time",) and ts["time"].attrs["units"] == "min"
    assert ts["tumor_alive"].attrs["units"] == "1" and ts["oxygen_mean"].attrs["units"] == "mmHg"
    assert ts["systemic_cytokine"].attrs["units"] == "pg/mL"
    assert float(ts["time"][-1]) == pytest.approx(3.5 * 1440)
    fs = xr.open_dataset(reference, engine="h5netcdf", group="fields")
    assert fs["oxygen"].dims == ("time", "y", "x") and fs["oxygen"].shape[1:] == (40, 40)
    assert fs["oxygen"].attrs["units"] == "mmHg" and fs["x"].attrs["units"] == "um"
    assert float(fs["x"][1] - fs["x"][0]) == 20.0
    cs = xr.open_dataset(reference, engine="h5netcdf", group="cells")
    assert cs["type"].dims == ("cell",) and cs["count"].dims == ("time",)
    assert int(cs["count"].sum()) == cs.sizes["cell"]
    root = xr.open_dataset(reference, engine="h5netcdf")
    assert root.attrs["status"] == "complete" and root["events"].dims == ("event",)
    for ds in (ts, fs, cs, root):
        ds.close()


@pytest.mark.slow
def test_failure_records_status_and_error_then_resume_completes_it(tmp_path, monkeypatch, reference):
    path = tmp_path / "f.h5"
    fail_at_tick(monkeypatch, 500)
    with pytest.raises(RuntimeError, match="simulated fault"):
        run(small(), path, quiet=True)
    r = tme_abm.open_run(path)
    assert r.status == "failed" and "simulated fault at tick 500" in r.attrs["error"]
    assert 360 <= len(r.timeseries) <= 501  # kept up to the last flush at least
    monkeypatch.undo()
    run(small(), path, quiet=True, resume=True)
    assert tme_abm.open_run(path).status == "complete" and "error" not in tme_abm.open_run(path).attrs
    assert_same_run(path, reference)


@pytest.mark.slow
def test_resume_refuses_another_config_and_a_complete_run(tmp_path, reference):
    path = tmp_path / "r.h5"
    path.write_bytes(reference.read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs["status"] = "running"
    with pytest.raises(RunFileError, match=r"different config \(differs in car_t.initial_cells\)"):
        run(small("car_t.initial_cells=3"), path, quiet=True, resume=True)
    with pytest.raises(RunFileError, match="complete; nothing to resume"):
        run(small(), reference, quiet=True, resume=True)


def _checkpoint_tick(path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["checkpoint"].attrs["tick"])
    except (OSError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkill_mid_run_leaves_a_readable_file_and_resume_matches(tmp_path, reference):
    path = tmp_path / "k.h5"
    sets = [a for s in SMALL for a in ("--set", s)]
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}
    proc = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "run", BASELINE, "--out", path, "-q", *sets],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _checkpoint_tick(path) < 120 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.13)  # somewhere between two checkpoints
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    r = tme_abm.open_run(path)
    assert r.status == "running"
    n = len(r.timeseries)
    assert 121 <= n < 841 and len(r.field_times) >= 4
    assert np.array_equal(r.timeseries["tick"].to_numpy(), np.arange(n))
    res = cli("run", BASELINE, "--resume", path, "-q", *sets)
    assert res.returncode == 0, res.stderr
    assert tme_abm.open_run(path).status == "complete"
    assert_same_run(path, reference)


@pytest.mark.slow
def test_bad_files_give_a_clear_error(tmp_path, reference):
    text = tmp_path / "notes.h5"
    text.write_text("not a run\n")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        tme_abm.open_run(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(RunFileError, match="not a tme_abm run file"):
        tme_abm.open_run(foreign)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(reference.read_bytes()[: reference.stat().st_size // 2])
    with pytest.raises(RunFileError, match="cut.h5: .*(truncated|corrupt)"):
        r = tme_abm.open_run(cut)
        r.timeseries, r.fields(), r.cells(-1)
    old = tmp_path / "old.h5"
    old.write_bytes(reference.read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["format"] = "tme_abm-run-2"
    with pytest.raises(RunFileError, match="old.h5: run file format 'tme_abm-run-2'; this version of tme_abm reads "
                                           "'tme_abm-run-4' .*written by tme_abm "):
        tme_abm.open_run(old)
    with pytest.raises(RunFileError, match="no such file"):
        tme_abm.open_run(tmp_path / "missing.h5")
    for bad in (text, foreign, cut):
        res = cli("summarize", bad)
        assert res.returncode != 0 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
        assert str(bad) in res.stderr


@pytest.mark.slow
def test_open_runs_table_and_summarize(tmp_path, reference):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "a.h5").write_bytes(reference.read_bytes())
    run(small("seed=5"), folder / "b.h5", quiet=True)
    (folder / "junk.h5").write_text("junk")
    table = tme_abm.open_runs(folder)
    assert list(table["path"].map(lambda p: Path(p).name)) == ["a.h5", "b.h5", "junk.h5"]
    assert list(table["status"]) == ["complete", "complete", "unreadable"]
    assert list(table["seed"][:2]) == [1, 5] and "not an HDF5 file" in table["error"][2]
    assert table["response_at_end"][0] in ("CR", "PR", "SD", "PD") and table["peak_blood_car_t"][0] > 0
    assert len(tme_abm.open_runs(str(folder / "[ab].h5"))) == 2
    res = cli("summarize", folder / "b.h5", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["status"] == "complete" and info["seed"] == 5 and info["outcomes"]["max_crs_grade"] >= 0


@pytest.mark.slow
def test_report_writes_figures_that_differ_between_runs(tmp_path, reference):
    other = tmp_path / "other.h5"
    run(small("seed=5", "car_t.initial_cells=60"), other, quiet=True)
    written = {}
    for name, path in (("ref", reference), ("other", other)):
        res = cli("report", path, "--out", tmp_path / name, "--day", "-3", "--day", "0.5")
        assert res.returncode == 0, res.stderr
        written[name] = sorted(Path(p).name for p in res.stdout.split())
    figures = ["antigen.png", "cells.png", "fields.png", "populations.png", "systemic.png"]
    assert written["ref"] == written["other"] == sorted(figures + ["summary.html", "summary.txt"])
    for fig in figures:
        a, b = imread(tmp_path / "ref" / fig), imread(tmp_path / "other" / fig)
        assert a.shape[0] >= 300 and a.shape[1] >= 400, fig
        assert a.shape != b.shape or not np.array_equal(a, b), f"{fig} is the same for two different runs"
    assert "response_at_end" in (tmp_path / "ref" / "summary.txt").read_text()
    assert "<img src=\"cells.png\"" in (tmp_path / "ref" / "summary.html").read_text()
