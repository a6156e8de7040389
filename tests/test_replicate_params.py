"""Parameters per replicate: the replicates of one batch may differ in the patient's
parameters, and replicate r with parameters theta equals the single run of theta with
its seed, bit for bit; a sweep runs design points that differ only there as one batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import BASELINE, EVENTS, SMALL, assert_same_run

import tme_abm
from tme_abm.config import load_config
from tme_abm.config.schema import per_replicate
from tme_abm.io import run
from tme_abm.io.runner import replicate_params, run_batch
from tme_abm.model import TMEModel
from tme_abm.studies.sweep import Executor, batches, load_spec, run_sweep, task_overrides, tasks

ROOT = Path(__file__).parent.parent
FREE = {"patient.expansion_per_min": [2.0e-4, 3.0e-3], "patient.marrow_homing": [0.3, 5.0],
        "patient.il6_per_min": [1.0, 30.0], "patient.variability.expansion": [0.0, 1.0]}
"""Four patient parameters and the bounds a design samples them in."""
# a short run of the quickstart lesion on 30 x 30 whose 1e8 CAR T arrive at its start,
# so that every free parameter acts within its half day
SHORT = {"lattice.shape": [30, 30], "tumor.radius_sites": 5, "backend": "numpy", "time.duration_days": 0.5,
         "therapy": [{"kind": "infusion", "day": 0, "dose_cells": 1.0e8}], "output.snapshot_every_min": 360,
         "output.record_every_ticks": 1, "patient.assessment_day": 0.5}


def test_which_keys_may_differ_per_replicate():
    assert per_replicate("patient.expansion_per_min") and per_replicate("patient.crs.fever")
    assert not per_replicate("patient.burden_scale")  # the lattice's weight sets its initial cells
    assert per_replicate("car_t.kill_probability") and per_replicate("tumor.capacity_fold")
    assert not per_replicate("tumor.divide_per_min") and not per_replicate("car_t.move.speed_um_per_min")
    assert not per_replicate("seed") and not per_replicate("lattice.shape")


def test_a_key_the_replicates_share_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tumor.divide_per_min cannot differ between the replicates"):
        TMEModel(load_config(BASELINE, SMALL), seeds=[1, 2], params=[{"tumor.divide_per_min": 1e-4}, {}])
    with pytest.raises(ValueError, match="2 parameter sets for 3 replicates"):
        TMEModel(load_config(BASELINE, SMALL), seeds=[1, 2, 3], params=[{}, {}])
    cfgs = [load_config(BASELINE, [*SMALL, f"seed={s}", f"tumor.divide_per_min={d}"])
            for s, d in ((1, 1e-4), (2, 2e-4))]
    with pytest.raises(ValueError, match="differ in tumor.divide_per_min"):
        run_batch(cfgs, [tmp_path / "a.h5", tmp_path / "b.h5"], quiet=True)


def test_each_cell_reads_its_replicates_rate_and_each_niche_its_growth():
    m = TMEModel(load_config(BASELINE, [*SMALL, *EVENTS]), seeds=[1, 2],
                 params=[{"car_t.kill_probability": 0.25, "tumor.doubling_days": 10.0},
                         {"car_t.kill_probability": 0.75, "tumor.doubling_days": 40.0}])
    rep = m.lattice.replicate_of(m.car_t.data["site"], np)
    assert set(rep) == {0, 1}
    assert np.array_equal(m.car_t.rate("kill_probability"), np.where(rep == 0, 0.25, 0.75))
    assert m.car_t.rate("divide_probability") == m.config.car_t.divide_probability  # shared: the config's float
    assert m.gompertz[0] == pytest.approx(4 * m.gompertz[1])


def test_replicate_params_are_the_keys_in_which_the_configs_differ():
    cfgs = [load_config(BASELINE, [*SMALL, f"seed={s}", f"name=r{s}", "patient.il6_per_min=6.0"]) for s in (1, 2)]
    assert replicate_params(cfgs) is None
    cfgs.append(load_config(BASELINE, [*SMALL, "seed=3", "patient.il6_per_min=2.5",
                                       "patient.crs.fever=0.7"]))
    first = {"patient.crs.fever": cfgs[0].patient.crs.fever, "patient.il6_per_min": 6.0}
    assert replicate_params(cfgs) == [first, first, {"patient.crs.fever": 0.7,
                                                     "patient.il6_per_min": 2.5}]


@pytest.mark.slow
def test_each_replicate_with_its_parameters_equals_its_single_run_bit_for_bit(tmp_path):
    """The small baseline with every therapy event, three replicates with their own seeds,
    patient parameters, CAR T rates and disease growth in one batch, against the three
    single runs."""
    thetas = [{"patient.expansion_per_min": 2.0e-3, "patient.marrow_homing": 1.0, "car_t.kill_probability": 0.9,
               "car_t.engage_per_min": 0.2, "tumor.capacity_fold": 2.0, "tumor.doubling_days": 10.0},
              {"patient.expansion_per_min": 5.0e-4, "patient.marrow_homing": 4.0, "car_t.kill_probability": 0.3,
               "car_t.death_per_min": 1e-3, "car_t.divide_probability": 0.1, "tumor.marrow_normal_cells": 50},
              {"patient.expansion_per_min": 1.0e-3, "patient.marrow_homing": 0.5,
               "car_t.exhaustion_per_engagement": 0.2, "tumor.carrying_capacity_cells": 300_000_000}]
    cfgs = [load_config(BASELINE, [*SMALL, *EVENTS, f"seed={7 + r}", f"name=r{r}",
                                   *(f"{k}={v}" for k, v in theta.items())]) for r, theta in enumerate(thetas)]
    batched = run_batch(cfgs, [tmp_path / f"b{r}.h5" for r in range(3)], quiet=True)
    for r, cfg in enumerate(cfgs):
        single = run(cfg, tmp_path / f"s{r}.h5", quiet=True)
        assert_same_run(batched[r], single)
        assert tme_abm.open_run(batched[r]).config == cfg
    # the parameters acted: the replicates' blood CAR T differ
    peaks = [tme_abm.open_run(p).outcomes["peak_blood_car_t"] for p in batched]
    assert len(set(peaks)) == 3


def design_spec(tmp_path: Path, extra: dict | None = None) -> Path:
    spec = {"name": "design", "base": str(ROOT / "configs" / "quickstart.yaml"), "seed": 5, "replicates": 1,
            "set": SHORT, "design": {"kind": "lhs", "samples": 32, "parameters": FREE,
                                     "log": ["patient.expansion_per_min", "patient.il6_per_min"]}}
    spec.update(extra or {})
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_points_that_differ_in_shared_keys_run_in_separate_batches(tmp_path):
    grid = {"kind": "grid", "parameters": {"patient.il6_per_min": [2.0, 6.0, 9.0],
                                           "tumor.divide_per_min": [1e-4, 2e-4]}}
    spec = load_spec(design_spec(tmp_path, {"design": grid, "replicates": 2}))[0]
    got = batches(tasks(spec), 8)
    assert len(got) == 2
    for b in got:
        assert len({t.params["tumor.divide_per_min"] for t in b}) == 1 and len(b) == 6
    assert [len(b) for b in batches(tasks(spec), 4)] == [4, 4, 2, 2]


@pytest.mark.slow
def test_a_32_point_design_of_4_parameters_runs_as_one_batch_equal_to_32_single_runs(tmp_path):
    spec, base = load_spec(design_spec(tmp_path))
    todo = tasks(spec)
    assert len(todo) == 32 and len(batches(todo, 32)) == 1
    table = run_sweep(design_spec(tmp_path), tmp_path / "out", Executor(workers=1, progress=False, batch=32))
    assert (table["status"] == "complete").all() and len(table) == 32
    outcomes, blood = [], []
    for task in todo:
        cfg = load_config(base, [*task_overrides(spec, task.params), f"seed={task.seed}", f"name={task.name}"])
        single = run(cfg, tmp_path / "single" / f"{task.name}.h5", quiet=True)
        assert_same_run(tmp_path / "out" / "runs" / f"{task.name}.h5", single)
        r = tme_abm.open_run(single)
        outcomes.append(r.outcomes)
        blood.append(float(r.timeseries["blood_car_t"].iloc[-1]))
    numeric = [k for k, v in outcomes[0].items() if isinstance(v, float)]
    for col in numeric:
        assert np.array_equal(table[col].to_numpy(), pd.DataFrame(outcomes)[col].to_numpy(), equal_nan=True), col
    # 32 different patients, not one patient 32 times
    assert len(set(blood)) == 32 and table["peak_cytokine"].nunique() == 32
