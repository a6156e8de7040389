"""The tme-abm command line, run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import cli

from tme_abm.bench import reference_lod_step
from tme_abm.engine.backend import make_backend
from tme_abm.engine.diffusion import DiffusionSolver, FieldGrid

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"


@pytest.mark.slow
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


@pytest.mark.slow
def test_validate_accepts_good_and_names_typo(tmp_path):
    assert cli("validate", QUICK).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICK.read_text().replace("spacing_um", "spacing_mu"))
    r = cli("validate", bad)
    assert r.returncode != 0
    assert "lattice.spacing_mu: unknown key" in r.stderr and str(bad) in r.stderr
    r = cli("run", bad, "--out", tmp_path / "x.h5")
    assert r.returncode != 0 and not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_bad_override_and_missing_file_fail_clearly(tmp_path):
    r = cli("validate", QUICK, "--set", "time.tick_min=-5")
    assert r.returncode != 0 and "time.tick_min: value -5" in r.stderr
    r = cli("validate", tmp_path / "nope.yaml")
    assert r.returncode != 0 and "config file not found" in r.stderr


@pytest.mark.slow
def test_bench_diffusion_json():
    r = cli("bench", "diffusion", "--shape", "24", "20", "16", "--fields", "2", "--repeats", "2",
            "--backend", "numpy", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["shape"] == [24, 20, 16] and res["fields"] == 2
    assert res["voxel_field_updates_per_s"] > 0
    r = cli("bench", "diffusion", "--shape", "16", "12", "--fields", "2", "--repeats", "2", "--backend", "numpy",
            "--reference", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["speedup_vs_reference"] == pytest.approx(res["reference_step_s"] / res["median_step_s"])
    r = cli("bench", "diffusion", "--shape", "16", "12", "--scheme", "steady", "--reference")
    assert r.returncode != 0 and "--reference times an LOD step" in r.stderr


def test_the_benchmarks_reference_lod_step_is_an_lod_step():
    """``bench diffusion --reference`` times a real LOD step: the same step as the
    solver's (2D and 3D, several fields, decay, no-flux faces)."""
    for shape in [(12, 10, 9), (14, 11)]:
        diff, decay, dt = np.array([1e5, 1e3, 30.0]), np.array([0.1, 0.0, 0.02]), 6.0
        init = np.random.default_rng(4).random((3, *shape))
        solver = DiffusionSolver(FieldGrid(shape, 20.0, diff, decay), dt, initial=init,
                                 backend=make_backend("numpy", "float64"))
        solver.step()
        u = init.copy()
        reference_lod_step(u, diff * dt / 20.0**2, decay * dt / len(shape))
        np.testing.assert_allclose(u, solver.values[:, 0], rtol=1e-10, atol=1e-12)
        solver.close()


@pytest.mark.slow
def test_explicit_cupy_without_device_is_a_clear_error(has_cuda):
    if has_cuda:
        pytest.skip("a CUDA device is present")
    env = {**os.environ, "TME_ABM_BACKEND": "cupy"}
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "bench", "diffusion", "--shape", "8", "8"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "backend 'cupy' was requested" in r.stderr


@pytest.mark.slow
def test_bench_model_reports_throughput_and_stages():
    r = cli("bench", "model", QUICK, "--days", "0.02", "--set", "car_t.initial_cells=30", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ticks"] == 5 and res["agent_updates"] > 0 and res["agent_updates_per_s"] > 0
    assert set(res["stage_seconds"]) == {"therapy", "fields", "sensing", "engagement", "movement",
                                         "division_recruitment", "death_clearance", "systemic", "secretion"}
    assert res["host_copies_per_tick"] > 0
    assert res["cpu_s"] > 0 and res["warm_up_s"] > 0  # CPU seconds beside wall; kernels loaded before the timing
    assert res["cpu_s_per_simulated_day"] == pytest.approx(res["cpu_s"] / res["simulated_days"])
    r = cli("bench", "model", QUICK, "--set", "car_t.rules.kil.x=1")
    assert r.returncode != 0 and "car_t.rules.kil" in r.stderr


@pytest.mark.slow
def test_bench_model_with_replicates_compares_the_batch_per_replicate_with_the_single_run():
    r = cli("bench", "model", QUICK, "--days", "0.02", "--replicates", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    b = res["batch"]
    assert b["replicates"] == 3 and b["wall_s_per_replicate"] == pytest.approx(b["wall_s"] / 3)
    assert res["speedup"] == pytest.approx(res["wall_s"] / b["wall_s_per_replicate"])
    assert b["cpu_s_per_replicate"] == pytest.approx(b["cpu_s"] / 3)
    assert b["cpu_s_per_replicate_day"] == pytest.approx(b["cpu_s"] / 3 / res["simulated_days"])
    assert res["cpu_speedup"] == pytest.approx(res["cpu_s"] / b["cpu_s_per_replicate"])
    r = cli("bench", "model", QUICK, "--days", "0.02", "--replicates", "2")
    assert r.returncode == 0 and "batch of 2 replicates" in r.stdout and "per replicate" in r.stdout


@pytest.mark.slow
def test_core_install_runs_without_the_extras_and_names_the_missing_one(tmp_path):
    """With dask, SALib and matplotlib unimportable (a core install), a run works and the
    commands that need an extra say which one in one line."""
    blocker = ("import sys; sys.modules.update(dict.fromkeys(['dask', 'distributed', 'SALib', 'matplotlib', "
               "'solara'])); "
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
    for args, extra, missing in ((("report", out), "report", "matplotlib"),
                                 (("sweep", ROOT / "configs/sweeps/burden.yaml", "--out", tmp_path / "s"), "sweeps",
                                  "dask"),
                                 (("experiment", "--list"), "sweeps", "dask"), (("view", out), "view", "solara")):
        r = lean(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: tme-abm {args[0]} needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'tme-abm[{extra}]'"]


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [x for x in r.stderr.splitlines() if not x.startswith(("warning:", "WARNING:"))]


@pytest.mark.slow
@pytest.mark.parametrize("setup, args, expected", [
    (lambda d: (d / "bin.yaml").write_bytes(bytes(range(256)) * 4), ["run", "{d}/bin.yaml"],
     "{d}/bin.yaml: not a text file"),
    (lambda d: (d / "empty.yaml").write_text(""), ["validate", "{d}/empty.yaml"], "{d}/empty.yaml: the file is empty"),
    (lambda d: (d / "folder").mkdir(), ["run", str(QUICK), "--out", "{d}/folder"], "{d}/folder: is a directory"),
    (lambda d: (d / "file").write_text("x"), ["run", str(QUICK), "--out", "{d}/file/run.h5"],
     "{d}/file/run.h5: cannot write the run file there"),
    (lambda d: None, ["run", str(QUICK), "--set", "tumor.radius_sites=500"],
     "tumor.radius_sites 500.0: a spheroid of diameter 1000.0 sites does not fit the lattice [120, 120] "
     "(from --set tumor.radius_sites=500)"),
    (lambda d: None, ["run", str(QUICK), "--seed", "-1"], "seed: value -1 is not allowed: Input should be greater "
                                                          "than or equal to 0 (from --seed -1)"),
    (lambda d: None, ["validate", str(QUICK), "--set", "fields.oxygn.initial=3"],
     "fields.oxygn: not a default field (did you mean oxygen?)"),
    (lambda d: None, ["validate", str(QUICK), "--set", "car_t.initial_cells=14000"],
     "car_t.initial_cells 14000: only 13086 free lattice sites are left"),
])
def test_user_errors_are_one_line(tmp_path, setup, args, expected):
    setup(tmp_path)
    r = cli(*(a.format(d=tmp_path) for a in args), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = error_lines(r)
    assert line.startswith("error: ") and expected.format(d=tmp_path) in line, line


@pytest.mark.slow
def test_report_refuses_a_file_as_folder_and_days_the_run_lacks(tmp_path):
    out = tmp_path / "q.h5"
    assert cli("run", QUICK, "--out", out, "--set", "time.duration_days=0.1", "-q").returncode == 0
    (tmp_path / "taken").write_text("x")
    for args, expected in ((["--out", tmp_path / "taken"], f"{tmp_path / 'taken'}: is a file"),
                           (["--day", "100"], "--day 100: the run's snapshots span days 0 to 0.1")):
        r = cli("report", out, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = error_lines(r)
        assert line.startswith(f"error: {expected}"), line


@pytest.mark.slow
def test_summarize_json_is_strict_json(tmp_path):
    out = tmp_path / "q.h5"
    assert cli("run", QUICK, "--out", out, "--set", "time.duration_days=0.1", "-q").returncode == 0
    r = cli("summarize", out, "--json")

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    info = json.loads(r.stdout, parse_constant=refuse)
    assert info["outcomes"]["time_to_progression_days"] is None  # NaN: no progression
    assert "day" in cli("summarize", out).stdout  # units in the text


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_an_interrupted_run_says_how_to_resume_and_that_command_finishes_it(tmp_path, sig, code, what):
    out = tmp_path / "i.h5"
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}
    proc = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "run", QUICK, "--out", out, "-q", "--seed", "4",
                             "--set", "time.duration_days=2"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out.exists() and h5py.is_hdf5(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    (line,) = [x for x in stderr.splitlines() if not x.startswith(("warning:", "WARNING:"))]
    assert line.startswith(f"error: {what}: the run file records status failed; continue it with: tme-abm run ")
    assert tme_abm_status(out) == "failed"
    command = shlex.split(line.split("continue it with: ", 1)[1])
    assert command[-2:] == ["--resume", str(out)] and "--seed" in command
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", *command[1:]], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert tme_abm_status(out) == "complete"


def tme_abm_status(path) -> str:
    with h5py.File(path, "r", locking=False) as f:
        return f.attrs["status"]


@pytest.mark.slow
def test_version_and_unexpected_errors_in_one_line_unless_debug(tmp_path):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("tme-abm ")
    odd = tmp_path / "odd.h5"  # a run file whose config is a number: not a case the readers know
    with h5py.File(odd, "w") as f:
        f.attrs["format"] = "tme_abm-run-4"
        f["config"] = 3
    r = cli("summarize", odd)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = error_lines(r)
    assert line.startswith("error: AttributeError: ") and "--debug" in line
    r = cli("--debug", "summarize", odd)
    assert r.returncode == 1 and "Traceback" in r.stderr


BLAS_CHECK = """
import json, sys
from tme_abm.cli import main  # sets the thread counts before NumPy loads
import threadpoolctl
sys.argv = ["tme-abm", *sys.argv[1:]]
try:
    main()
finally:
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    print("BLAS", json.dumps([i["num_threads"] for i in blas]))
"""


@pytest.mark.slow
def test_run_uses_one_blas_thread(tmp_path):
    """``tme-abm run`` starts no second BLAS thread (the 4 x 4 matrix exponentials of the
    patient cost 2.7x a run's CPU with two), whatever the environment did not say."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", BLAS_CHECK, "run", str(QUICK), "--out", str(tmp_path / "q.h5"),
                        "--set", "time.duration_days=0.05", "-q"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout.split("BLAS")[-1])
    assert counts and set(counts) == {1}
