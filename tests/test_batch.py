"""The replicate axis: R replicates of one config stepped in lockstep in one model equal
the single runs with their seeds, bit for bit, in every file they write; a killed batch
resumes to the same files; nothing leaks between replicates."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BASELINE, EVENTS, SMALL, assert_same_run, cli, fail_at_tick

import tme_abm
from tme_abm.config import load_config
from tme_abm.engine import rng as crng
from tme_abm.engine.backend import make_backend
from tme_abm.io import run
from tme_abm.io.runner import replicates_of, run_batch
from tme_abm.model import TMEModel

pytestmark = pytest.mark.slow  # every test here runs models (or a browser)


# the small baseline (lymphodepletion, infusion; 4 days, 960 ticks) on a bulky lesion
# (solid core plus dispersed cells) with CAR T cells from the start, a resection of the
# outermost cells, two radiotherapy fractions with their CXCL10 pulse and an MRD cut, so
# every therapy event acts per replicate
def batch_config(*extra):
    return load_config(BASELINE, [*SMALL, *EVENTS, *extra])


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """Three replicates run one at a time, each with its own seed: (configs, paths)."""
    out = tmp_path_factory.mktemp("singles")
    cfgs, paths = replicates_of(batch_config(), 3, out)
    for c, p in zip(cfgs, paths):
        run(c, p, quiet=True)
    return cfgs, paths


def test_replicates_differ_in_seed_only_and_have_their_own_files(tmp_path):
    cfgs, paths = replicates_of(batch_config("seed=40"), 12, tmp_path)
    assert [c.seed for c in cfgs] == list(range(40, 52))
    assert [p.name for p in paths][:2] == ["baseline_r00.h5", "baseline_r01.h5"] and paths[-1].name == "baseline_r11.h5"
    assert all(p.parent == tmp_path for p in paths)
    assert cfgs[3] == batch_config("seed=43")


def test_each_replicate_of_a_batch_equals_its_single_run_bit_for_bit(tmp_path, singles):
    cfgs, paths = singles
    out = run_batch(cfgs, [tmp_path / p.name for p in paths], quiet=True)
    events = set()
    for single, batched, cfg in zip(paths, out, cfgs):
        assert_same_run(batched, single)  # time series, events, fields, cells, outcomes
        r = tme_abm.open_run(batched)
        assert r.status == "complete" and r.config == cfg and r.attrs["seed"] == cfg.seed
        events |= {e["kind"] for e in r.events}
    assert events == {"lymphodepletion", "infusion", "resection", "radiotherapy", "mrd"}
    # the replicates did differ: the test compares different runs, not one run thrice
    a, b = (tme_abm.open_run(p).timeseries for p in out[:2])
    assert not np.array_equal(a["car_t_effector"], b["car_t_effector"])
    assert a["car_t_effector"].max() > 0 and a["monocytes"].max() > 0


def killed_at(monkeypatch, tick: int, cfgs, out, **kw) -> None:
    """Run a batch that fails at ``tick`` (its files record status failed)."""
    fail_at_tick(monkeypatch, tick)
    with pytest.raises(RuntimeError, match="simulated fault"):
        run_batch(cfgs, out, quiet=True, **kw)
    monkeypatch.undo()


@pytest.mark.parametrize("again", [None, 130], ids=["one checkpoint tick", "two checkpoint ticks"])
def test_a_killed_batch_resumes_to_the_files_of_the_single_runs(tmp_path, monkeypatch, singles, again):
    """Killed after its checkpoint at tick 480 (every 360 min = 60 ticks); with ``again``,
    replicates 1 and 2 then ran afresh and were killed at that tick (checkpoint 120): the
    files, checkpointed at different ticks, resume in groups."""
    cfgs, paths = singles
    out = [tmp_path / p.name for p in paths]
    killed_at(monkeypatch, 500, cfgs, out)
    assert {tme_abm.open_run(p).status for p in out} == {"failed"}
    if again:
        killed_at(monkeypatch, again, cfgs[1:], out[1:], overwrite=True)
    run_batch(cfgs, out, quiet=True, resume=True)
    for single, batched in zip(paths, out):
        assert_same_run(batched, single)


def test_a_single_run_resumes_a_replicate_of_a_batch(tmp_path, monkeypatch, singles):
    cfgs, paths = singles
    out = [tmp_path / p.name for p in paths]
    killed_at(monkeypatch, 300, cfgs, out)
    run(cfgs[2], out[2], quiet=True, resume=True)
    assert_same_run(out[2], paths[2])


def test_a_batch_refuses_configs_that_differ_in_more_than_seed_and_name(tmp_path):
    cfgs = [batch_config(), batch_config("seed=5", "car_t.initial_cells=3")]
    with pytest.raises(ValueError, match="differ in car_t.initial_cells"):
        run_batch(cfgs, [tmp_path / "a.h5", tmp_path / "b.h5"], quiet=True)
    with pytest.raises(Exception, match="its own file"):
        run_batch(replicates_of(batch_config(), 2, tmp_path)[0], [tmp_path / "a.h5"] * 2, quiet=True)


def test_nothing_crosses_between_replicates():
    """Emptying one replicate of a batch changes nothing in the other: no cell, move,
    contact or diffusion crosses, and every cell's key names its own replicate."""
    be = make_backend("numpy", "float64")
    cfg = batch_config("car_t.initial_cells=40")
    m = TMEModel(cfg, backend=be, seeds=[3, 4])
    n = m.lattice.n_grid
    for p in m.populations:
        assert (p.data["id"] >> crng.ID_BITS == p.data["site"] // n).all(), p.kind
        p.remove(p.data["site"] >= n, how="cleared")  # empty replicate 1
    for f in range(m.fields.solver.n_fields):  # and clear its fields
        m.fields.solver.field(f)[1] = 0.0
    single = TMEModel(cfg, backend=be, seed=3)
    for _ in range(40):
        m.step()
        single.step()
    rows = m.current_rows()
    assert rows[0] == single.current_row()
    assert rows[0]["tumor_alive"] > 0 and rows[1]["tumor_alive"] == 0 and rows[1]["car_t_effector"] == 0
    np.testing.assert_array_equal(be.to_host(m.fields.values[:, 0]), be.to_host(single.fields.values[:, 0]))


def test_run_replicates_writes_one_run_file_per_replicate_that_open_runs_lists(tmp_path):
    sets = [a for s in [*SMALL, "time.duration_days=0.2", "therapy=[{kind: infusion, day: 0, dose_cells: 1.0e8}]",
                        "seed=9"] for a in ("--set", s)]
    res = cli("run", BASELINE, "--replicates", "3", "--out", tmp_path / "reps", "-q", *sets)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "reps")
    runs = tme_abm.open_runs(tmp_path / "reps")
    assert len(runs) == 3 and sorted(runs["seed"]) == [9, 10, 11] and set(runs["name"]) == {"baseline"}
    assert sorted(p.name for p in (tmp_path / "reps").glob("*.h5")) == [f"baseline_r{r}.h5" for r in range(3)]
    again = cli("run", BASELINE, "--replicates", "3", "--out", tmp_path / "reps", "-q", *sets)
    assert again.returncode == 1 and "output file exists" in again.stderr
    single = cli("run", BASELINE, "--resume", tmp_path / "reps", "-q", *sets)
    assert single.returncode == 2 and "give --replicates R" in single.stderr


@pytest.mark.parametrize("config, sets, ticks", [
    ("solid_3d.yaml", ["lattice.shape=[14, 16, 18]", "tumor.radius_sites=5", "car_t.initial_cells=30"], 120),
    ("heme_marrow.yaml", ["lattice.shape=[40, 40]", "tumor.initial_cells=150", "time.burn_in_days=0",
                          "therapy=[{kind: infusion, day: 0, dose_cells: 1.0e8}]"], 300),
], ids=["3d lesion", "dispersed marrow disease"])
def test_a_batch_is_exact_in_3d_and_for_dispersed_disease(config, sets, ticks):
    """3D lattices take the LOD's other transposes; dispersed disease places cells with
    each replicate's setup generator."""
    be = make_backend("numpy", "float32")
    cfg = load_config(BASELINE.parent / config, ["backend=numpy", "time.duration_days=4", *sets])
    batch = TMEModel(cfg, backend=be, seeds=[5, 6, 7])
    singles = [TMEModel(cfg, backend=be, seed=s) for s in (5, 6, 7)]
    for _ in range(ticks):
        for m in (batch, *singles):
            m.step()
    rows = batch.current_rows()
    for r, single in enumerate(singles):
        np.testing.assert_equal(single.current_row(), rows[r])  # NaN medians once the tumor is gone
        np.testing.assert_array_equal(be.to_host(batch.fields.values[:, r]), be.to_host(single.fields.values[:, 0]))
    assert rows[0] != rows[1] and max(r["car_t_effector"] + r["car_t_exhausted"] for r in rows) > 0
