"""Calibration: a spec declares priors and targets; history matching recovers a known
parameter set from data the model simulated there; a killed calibration continues; the
chosen parameters become defaults with their provenance only when every target holds."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import cli

from tme_abm.config import load_config
from tme_abm.io import open_run
from tme_abm.io.runner import run_batch
from tme_abm.studies.calibration import adopt, load_calibration
from tme_abm.studies.calibration.matching import Emulator, distance, from_unit, next_design, survivors, to_unit
from tme_abm.studies.calibration.spec import CalibrationSpec
from tme_abm.studies.calibration.targets import point_statistics, run_measures, statistic, variance
from tme_abm.studies.errors import SweepError
from tme_abm.studies.sweep import overrides_of

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"
# one day of the quickstart lesion on 30 x 30, 1e8 CAR T on day 0, an antigen sink in blood
# (B cells) that drives their expansion, and no between-patient variability
SET = {"lattice.shape": [30, 30], "tumor.radius_sites": 5, "backend": "numpy", "time.duration_days": 1.0,
       "therapy": [{"kind": "infusion", "day": 0, "dose_cells": 1.0e8}], "patient.assessment_day": 1.0,
       "patient.normal_antigen_cells": 5.0e9, "patient.variability.expansion": 0.0,
       "patient.variability.cytokine": 0.0, "output.snapshot_every_min": 720}
TRUTH = {"patient.il6_per_min": 6.0, "patient.expansion_per_min": 1.0e-3}
"""The parameter set the test simulates its data at and the calibration must recover."""
PRIORS = {"patient.il6_per_min": {"low": 1.0, "high": 30.0, "log": True, "source": "test prior"},
          "patient.expansion_per_min": {"low": 3.0e-4, "high": 3.0e-3, "log": True, "source": "test prior"}}
TARGETS = {"cytokine": {"measure": "peak_cytokine", "statistic": "mean", "transform": "log10", "tolerance": 0.06,
                        "source": "simulated at TRUTH"},
           "blood": {"measure": "blood_car_t_per_ul", "day": 1.0, "statistic": "mean", "transform": "log10",
                     "tolerance": 0.06, "source": "simulated at TRUTH"}}


def spec_doc(targets: dict, **method) -> dict:
    return {"name": "tiny", "config": str(QUICK), "set": SET, "seed": 3, "parameters": PRIORS, "targets": targets,
            "method": {"waves": 2, "points": 8, "replicates": 2, "candidates": 4000, "confirm_replicates": 4,
                       **method}}


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> dict:
    """The targets' values: their statistics over 4 patients simulated at TRUTH."""
    out = tmp_path_factory.mktemp("truth")
    cfgs = [load_config(QUICK, overrides_of({**SET, **TRUTH, "seed": 900 + r, "name": f"t{r}"})) for r in range(4)]
    paths = run_batch(cfgs, [out / f"t{r}.h5" for r in range(4)], quiet=True)
    spec = CalibrationSpec.model_validate(spec_doc({k: {**t, "value": 0.0} for k, t in TARGETS.items()}))
    stats, _ = point_statistics(spec, [run_measures(open_run(p), spec) for p in paths], seed=0)
    return {k: {**t, "value": float(v)} for (k, t), v in zip(TARGETS.items(), stats)}


def write_spec(folder: Path, doc: dict) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_spec_names_its_problems(tmp_path):
    good = spec_doc({k: {**t, "value": 1.0} for k, t in TARGETS.items()})
    assert load_calibration(write_spec(tmp_path, good))[1] == QUICK
    bad = [({"parameters": {"patient.il6_per_min": {"low": 5, "high": 1, "source": "x"}}}, "must be below high"),
           ({"parameters": {"patient.il6_per_min": {"low": 1, "high": 5}}}, "source"),
           ({"parameters": {"car_t.initial_cells": {"low": 1, "high": 5, "source": "x"}}}, "quickstart.yaml sets it"),
           ({"parameters": {"patient.fitness_loss": {"low": 0.1, "high": 5, "source": "x"}}}, "does not validate"),
           ({"targets": {"x": {"measure": "nonsense", "statistic": "mean", "value": 1, "tolerance": 1,
                               "source": "x"}}}, "not an outcome"),
           ({"targets": {"x": {"measure": "response_at_assessment", "statistic": "rate", "value": 0.8,
                               "tolerance": 0.1, "source": "x"}}}, "exactly one of equals, at_least")]
    for change, message in bad:
        with pytest.raises(SweepError, match=message):
            load_calibration(write_spec(tmp_path, {**good, **change}))


def test_the_shipped_spec_validates_by_name_and_a_bad_one_is_one_line(tmp_path):
    r = cli("validate", "heme_cd19")
    assert r.returncode == 0 and "valid calibration spec (8 parameters, 9 targets" in r.stdout
    doc = yaml.safe_load((ROOT / "configs" / "calibration" / "heme_cd19.yaml").read_text())
    doc["config"] = str(ROOT / "configs" / "heme_marrow.yaml")
    doc["targets"]["severe_crs"]["value"] = 1.7
    r = cli("calibrate", write_spec(tmp_path, doc), "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "targets.severe_crs: a rate's value must be in [0, 1], got 1.7" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_unit_coordinates_round_trip_and_log_priors_are_uniform_in_log10():
    spec = CalibrationSpec.model_validate(spec_doc({k: {**t, "value": 1.0} for k, t in TARGETS.items()}))
    u = to_unit(spec, TRUTH)
    assert np.allclose(list(from_unit(spec, u)[0].values()), list(TRUTH.values()))
    assert from_unit(spec, np.array([0.5, 0.5]))[0]["patient.il6_per_min"] == pytest.approx(np.sqrt(30.0))


def test_rates_medians_and_their_variances():
    spec = CalibrationSpec.model_validate(spec_doc({
        "cr": {"measure": "response_at_assessment", "statistic": "rate", "equals": "CR", "value": 0.8,
               "tolerance": 0.1, "source": "x"},
        "grade3": {"measure": "max_crs_grade", "statistic": "rate", "at_least": 3, "value": 0.2, "tolerance": 0.1,
                   "source": "x"},
        "onset": {"measure": "crs_onset_day", "statistic": "median", "value": 2, "tolerance": 1, "source": "x"}}))
    t = spec.targets
    assert statistic(t["cr"], ["CR", "CR", "PR", "SD"]) == 0.5
    assert statistic(t["grade3"], [0.0, 3.0, 4.0, 2.0, float("nan")]) == 0.4
    assert statistic(t["onset"], [1.0, float("nan"), 3.0, 2.0]) == 2.0  # a patient without CRS has no onset
    # the binomial variance with half a success added: never 0, even at a rate of 0 or 1
    assert variance(t["cr"], ["CR"] * 10, 0) == pytest.approx((10.5 / 11) * (0.5 / 11) / 11)
    assert 0 < variance(t["onset"], [1.0, 2.0, 3.0, 4.0, 5.0], 0) < 2.0


def test_the_emulator_interpolates_a_smooth_function_within_its_error():
    rng = np.random.default_rng(0)
    x = rng.random((30, 2))
    f = np.sin(3 * x[:, 0]) + x[:, 1] ** 2
    em = Emulator(x, f, np.full(30, 1e-6))
    xt = rng.random((200, 2))
    mu, var = em.predict(xt)
    err = np.abs(mu - (np.sin(3 * xt[:, 0]) + xt[:, 1] ** 2))
    assert err.max() < 0.05 and (err <= 3 * np.sqrt(var) + 1e-3).mean() > 0.95


def test_implausibility_rules_out_exactly_the_points_whose_statistic_misses_its_tolerance():
    """An emulator that knows f(u) = u (the first coordinate) almost exactly: with the
    target z and tolerance tol, the points not ruled out are those with |u - z| < tol."""
    doc = spec_doc({"cytokine": {**TARGETS["cytokine"], "value": 0.4, "tolerance": 0.1}}, candidates=2000)
    spec = CalibrationSpec.model_validate(doc)
    x = np.random.default_rng(1).random((40, 2))
    ems = [Emulator(x, x[:, 0], np.full(40, 1e-10))]
    alive = survivors(spec, ems, wave=2)
    u = alive.survivors[:, 0]
    assert u.min() > 0.29 and u.max() < 0.51 and alive.fraction == pytest.approx(0.2, abs=0.03)
    design = next_design(spec, alive, wave=2)
    assert len(design) == spec.method.points and all(0.29 < v < 0.51 for v in design[:, 0])
    # a simulated point's distance: its largest miss in tolerances
    assert list(distance(spec, np.array([[0.45], [0.2], [np.nan]]))) == pytest.approx([0.5, 2.0, np.inf])


def _calibrate(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "calibrate", str(spec), "--out", str(out),
                             "--workers", "1", "--batch", "16", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, observed) -> tuple[Path, Path, dict]:
    """The tiny calibration, killed once during its first wave and run again to the end."""
    d = tmp_path_factory.mktemp("calibration")
    spec = write_spec(d, spec_doc(observed))
    out = d / "out"
    first = _calibrate(spec, out)
    deadline = time.time() + 300
    while not list((out / "waves" / "w01" / "runs").glob("*.h5")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "chosen.yaml").exists()  # it was killed before the end
    second = _calibrate(spec, out)
    text = second.communicate(timeout=900)[0]
    assert second.returncode == 0, text
    return spec, out, yaml.safe_load((out / "chosen.yaml").read_text())


@pytest.mark.slow
def test_a_tiny_calibration_recovers_the_parameters_the_data_came_from(calibrated):
    _spec, out, chosen = calibrated
    assert chosen["all_within"], chosen["targets"]
    for k, truth in TRUTH.items():  # within 15% of the truth (log10 distance 0.06)
        assert abs(np.log10(chosen["parameters"][k] / truth)) < 0.06, (k, chosen["parameters"][k], truth)
    points = [r for r in csv.DictReader((out / "points.csv").open())]
    assert {r["wave"] for r in points} == {"1", "2"} and len(points) == 16
    # the second wave searched where the first left room: closer to the targets
    dist = {w: np.median([float(r["distance"]) for r in points if r["wave"] == w]) for w in ("1", "2")}
    assert dist["2"] < dist["1"]
    assert (out / "report.md").exists() and (out / "figures" / "nonimplausible.png").exists()
    prov = chosen["provenance"]
    assert prov["spec_sha256"] and prov["commit"] and prov["declared_commit"] and prov["declared_at"]
    assert prov["runs"] == 16 * 2 + 4


@pytest.mark.slow
def test_a_finished_calibration_run_again_runs_nothing_and_chooses_the_same(calibrated):
    spec, out, chosen = calibrated
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    again = _calibrate(spec, out)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert yaml.safe_load((out / "chosen.yaml").read_text())["parameters"] == chosen["parameters"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == before


@pytest.mark.slow
def test_a_different_spec_in_the_folder_is_refused(calibrated, tmp_path):
    spec, out, _ = calibrated
    doc = yaml.safe_load(spec.read_text())
    doc["method"]["points"] = 9
    r = cli("calibrate", write_spec(tmp_path, doc), "--out", out)
    assert r.returncode == 2 and "holds a different calibration" in r.stderr


@pytest.mark.slow
def test_adopting_writes_the_chosen_values_and_their_provenance(calibrated, tmp_path):
    _spec, out, chosen = calibrated
    table = tmp_path / "parameters.csv"
    table.write_text((ROOT / "tme_abm" / "biology" / "data" / "parameters.csv").read_text())
    assert sorted(adopt(out, table)) == sorted(TRUTH)
    rows = {r["key"]: r for r in csv.DictReader(table.open())}
    for k, v in chosen["parameters"].items():
        assert float(rows[k]["value"]) == pytest.approx(v, rel=1e-5)
        assert rows[k]["source"].startswith("calibrated by tiny (tiny.yaml, sha256 ")
    missed = yaml.safe_load((out / "chosen.yaml").read_text())
    missed["all_within"] = False
    missed["targets"]["blood"]["within"] = False
    (tmp_path / "missed").mkdir()
    (tmp_path / "missed" / "chosen.yaml").write_text(yaml.safe_dump(missed))
    with pytest.raises(SweepError, match="misses blood"):
        adopt(tmp_path / "missed", table)
