"""The tme-abm command line, run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"


def cli(*args, cwd=None):
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "tme_abm.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_run_writes_a_run_file_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "q.h5"
    r = cli("run", QUICK, "--out", out, "--set", "time.duration_days=0.1", "--seed", "9", "-q")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete" and f.attrs["seed"] == 9
        assert f.attrs["backend"] == "numpy" and f.attrs["package_version"]
        assert "seed: 9" in f["config"][()].decode()
        ts = f["timeseries"]
        n = len(ts["time"])
        assert n == 25  # initial row + 24 ticks of 6 min
        assert ts["tumor_alive"][0] > 0 and "oxygen_mean" in ts and "hypoxic_fraction" in ts
        assert f["fields/oxygen"].shape[1:] == (120, 120)
        assert f["fields/oxygen"].attrs["units"] == "mmHg"
        assert f["outcomes"].attrs["response_at_end"] in ("CR", "PR", "SD", "PD")
        assert "crs_grade" in ts and "blood_car_t" in ts
    before = out.read_bytes()
    r = cli("run", QUICK, "--out", out, "--set", "time.duration_days=0.1", "-q")
    assert r.returncode != 0 and "exists" in r.stderr
    assert out.read_bytes() == before  # nothing already written is lost


def test_validate_accepts_good_and_names_typo(tmp_path):
    assert cli("validate", QUICK).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICK.read_text().replace("spacing_um", "spacing_mu"))
    r = cli("validate", bad)
    assert r.returncode != 0
    assert "lattice.spacing_mu: unknown key" in r.stderr and str(bad) in r.stderr
    r = cli("run", bad, "--out", tmp_path / "x.h5")
    assert r.returncode != 0 and not (tmp_path / "x.h5").exists()


def test_bad_override_and_missing_file_fail_clearly(tmp_path):
    r = cli("validate", QUICK, "--set", "time.tick_min=-5")
    assert r.returncode != 0 and "time.tick_min: value -5" in r.stderr
    r = cli("validate", tmp_path / "nope.yaml")
    assert r.returncode != 0 and "config file not found" in r.stderr


def test_bench_diffusion_json():
    r = cli("bench", "diffusion", "--shape", "24", "20", "16", "--fields", "2", "--repeats", "2",
            "--backend", "numpy", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["shape"] == [24, 20, 16] and res["fields"] == 2
    assert res["voxel_field_updates_per_s"] > 0


def test_explicit_cupy_without_device_is_a_clear_error(has_cuda):
    if has_cuda:
        pytest.skip("a CUDA device is present")
    env = {**os.environ, "TME_ABM_BACKEND": "cupy"}
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "bench", "diffusion", "--shape", "8", "8"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "backend 'cupy' was requested" in r.stderr


def test_bench_model_reports_throughput_and_stages():
    r = cli("bench", "model", QUICK, "--days", "0.02", "--set", "car_t.initial_cells=30", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ticks"] == 5 and res["agent_updates"] > 0 and res["agent_updates_per_s"] > 0
    assert set(res["stage_seconds"]) == {"therapy", "fields", "sensing", "engagement", "movement",
                                         "division_recruitment", "death_clearance", "systemic", "secretion"}
    r = cli("bench", "model", QUICK, "--set", "car_t.rules.kil.x=1")
    assert r.returncode != 0 and "car_t.rules.kil" in r.stderr


@pytest.mark.parametrize("name", ["quickstart", "baseline", "heme_marrow", "solid_3d"])
def test_shipped_configs_are_valid(name):
    r = cli("validate", ROOT / "configs" / f"{name}.yaml")
    assert r.returncode == 0, r.stderr


def test_core_install_runs_without_the_extras_and_names_the_missing_one(tmp_path):
    """With dask, SALib and matplotlib unimportable (a core install), a run works and the
    commands that need an extra say which one in one line."""
    blocker = ("import sys; sys.modules.update(dict.fromkeys(['dask', 'distributed', 'SALib', 'matplotlib'])); "
               "from tme_abm.cli import main; sys.argv[0] = 'tme-abm'; main()")
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}

    def lean(*args):
        return subprocess.run([sys.executable, "-c", blocker, *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)

    out = tmp_path / "lean.h5"
    r = lean("run", QUICK, "--out", out, "--set", "time.duration_days=0.05", "-q")
    assert r.returncode == 0, r.stderr
    r = lean("summarize", out)
    assert r.returncode == 0 and "status complete" in r.stdout, r.stderr
    for args, extra in ((("report", out), "report"), (("sweep", ROOT / "configs/sweeps/burden.yaml", "--out",
                                                        tmp_path / "s"), "sweeps"),
                        (("experiment", "--list"), "sweeps")):
        r = lean(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: tme-abm {args[0]} needs the '{extra}' extra "
            f"({'matplotlib' if extra == 'report' else 'dask'} is not installed): pip install 'tme-abm[{extra}]'"]
