"""Sweeps on a real Dask LocalCluster: one run file and row per task, worker-count
independence, failures, re-runs, a killed sweep, job scripts, summaries."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dask.distributed import Client
from helpers import assert_same_run

import tme_abm
from tme_abm.engine.backend import _cupy_device_usable
from tme_abm.studies.summary import summarize_sweep
from tme_abm.studies.sweep import (
    Executor,
    SweepError,
    batches,
    gpu_cluster,
    jobqueue_cluster,
    load_spec,
    run_sweep,
    tasks,
)
from tme_abm.studies.table import TableAppender, read_table, table_columns
from tme_abm.viz.study_figures import sweep_figures

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"
TINY = {"lattice.shape": [30, 30], "tumor.radius_sites": 5, "time.duration_days": 0.05, "backend": "numpy",
        "output.snapshot_every_min": 60, "output.cell_snapshot_every_min": 60}


def spec_file(tmp_path, name="s", design=None, replicates=2, **extra) -> Path:
    spec = {"name": name, "base": str(QUICK), "seed": 11, "replicates": replicates, "set": dict(TINY),
            "design": design or {"kind": "grid", "parameters": {"car_t.initial_cells": [5, 20]}}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def without_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["task_seconds"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep2")
    spec = spec_file(d)
    return spec, d / "out", run_sweep(spec, d / "out", Executor(workers=2, progress=False))


@pytest.mark.slow
def test_two_workers_one_run_file_and_row_per_task_and_one_worker_agrees(two_workers, tmp_path):
    spec, out, table = two_workers
    assert len(table) == 4 and list(table["status"]) == ["complete"] * 4
    assert sorted(p.name for p in (out / "runs").glob("*.h5")) == [f"p000{i}_r00{r}.h5" for i in (0, 1) for r in (0, 1)]
    assert list(table["car_t.initial_cells"]) == [5, 5, 20, 20]
    assert table["seed"].nunique() == 4 and list(table["seed"]) == [t.seed for t in tasks(load_spec(spec)[0])]
    for _, row in table.iterrows():
        r = tme_abm.open_run(out / row["path"])
        assert r.attrs["seed"] == row["seed"] and r.config.car_t.initial_cells == row["car_t.initial_cells"]
        assert r.outcomes["peak_cytokine"] == pytest.approx(row["peak_cytokine"], rel=1e-12)
    one = run_sweep(spec, tmp_path / "one", Executor(workers=1, progress=False))
    pd.testing.assert_frame_equal(without_timing(one), without_timing(table))


@pytest.mark.slow
def test_replicates_run_in_batches_write_what_they_write_alone(two_workers, tmp_path):
    """The fixture ran each point's 2 replicates as one batch (the default); run one at a
    time, every file and row is the same."""
    spec, out, table = two_workers
    assert batches(tasks(load_spec(spec)[0]), 2) == [[t, u] for t, u in zip(*[iter(tasks(load_spec(spec)[0]))] * 2)]
    alone = run_sweep(spec, tmp_path / "alone", Executor(workers=1, progress=False, batch=1))
    pd.testing.assert_frame_equal(without_timing(alone), without_timing(table))
    for _, row in table.iterrows():
        assert_same_run(tmp_path / "alone" / row["path"], out / row["path"])


@pytest.mark.slow
def test_failed_task_is_recorded_others_finish_and_rerun_runs_nothing_new(tmp_path):
    spec = spec_file(tmp_path, design={"kind": "grid", "parameters": {"car_t.initial_cells": [5, -3]}},
                     replicates=1)
    out = tmp_path / "out"
    table = run_sweep(spec, out, Executor(workers=1, progress=False))
    assert list(table["status"]) == ["complete", "failed"]
    assert "car_t.initial_cells" in table["error"][1] and table["ran"][0]
    first = (out / "runs" / "p0000_r000.h5").stat().st_mtime_ns
    again = run_sweep(spec, out, Executor(workers=1, progress=False))
    assert not again["ran"].any() and (out / "runs" / "p0000_r000.h5").stat().st_mtime_ns == first
    assert list(again["status"]) == ["complete", "failed"]  # the failure was retried, and failed again


@pytest.mark.slow
def test_killed_sweep_resumes_and_completes(tmp_path):
    spec = spec_file(tmp_path, design={"kind": "list", "points": [{"car_t.initial_cells": n} for n in (5, 10, 15)]},
                     replicates=2, )
    data = yaml.safe_load(spec.read_text())
    data["set"]["time.duration_days"] = 0.4
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}
    proc = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "sweep", spec, "--out", out, "--workers", "1",
                             "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "outcomes.csv").exists() and len(read_table(out)) >= 2:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the client, its scheduler and worker processes
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = read_table(out)
    assert 2 <= len(kept) < 6 and (kept["status"] == "complete").all()
    table = run_sweep(spec, out, Executor(workers=1, progress=False))
    assert len(table) == 6 and (table["status"] == "complete").all()
    done_before = set(zip(kept["point"], kept["replicate"]))
    assert all(not r.ran for r in table.itertuples() if (r.point, r.replicate) in done_before)
    assert table["ran"].sum() == 6 - len(kept)


def test_slurm_job_script_has_the_requested_resources(tmp_path):
    opts = {"cores": 4, "memory": "16GB", "walltime": "02:00:00", "queue": "gpu", "account": "lab",
            "job_extra_directives": ["--gres=gpu:1"]}
    spec, _ = load_spec(spec_file(tmp_path, cluster={"kind": "slurm", "jobs": 3, "options": opts}))
    cluster = jobqueue_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for expected in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=15G", "#SBATCH -t 02:00:00", "#SBATCH -p gpu",
                     "#SBATCH -A lab", "#SBATCH --gres=gpu:1"):
        assert expected in script, (expected, script)


def test_gpu_workers_each_use_their_own_device():
    """With dask-cuda and a GPU, each worker's first visible device (the one CuPy uses) is
    its own; without them, --gpus is a one-line error naming the extra or the problem."""
    if not (importlib.util.find_spec("dask_cuda") and _cupy_device_usable()[0] is not None):
        with pytest.raises(SweepError, match="no CUDA device 0 on this machine|dask-cuda: pip install|cannot start"):
            gpu_cluster([0])
        return
    cluster = gpu_cluster([0])
    try:
        with Client(cluster) as client:
            seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        cluster.close()
    assert [v.split(",")[0] for v in seen.values()] == ["0"]


def test_gpu_workers_are_one_single_threaded_local_cuda_worker_per_listed_device(monkeypatch):
    """The wiring to dask-cuda, checked without a GPU: LocalCUDACluster gets the listed
    devices and one thread per worker; its failure to start is a one-line SweepError."""
    seen = {}

    class FakeLocalCUDACluster:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            if kwargs["CUDA_VISIBLE_DEVICES"] == [9]:
                raise RuntimeError("no CUDA device 9")

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeLocalCUDACluster))
    monkeypatch.setattr("tme_abm.studies.sweep.cuda_device_count", lambda: 10)
    assert isinstance(gpu_cluster([2, 0]), FakeLocalCUDACluster)
    assert seen["CUDA_VISIBLE_DEVICES"] == [2, 0] and seen["threads_per_worker"] == 1
    with pytest.raises(SweepError, match=r"--gpus 9: cannot start GPU workers \(RuntimeError: no CUDA device 9\)"):
        gpu_cluster([9])
    monkeypatch.setattr("tme_abm.studies.sweep.cuda_device_count", lambda: 1)
    with pytest.raises(SweepError, match=r"--gpus 0,1: no CUDA device 1 on this machine \(devices: 0\)"):
        gpu_cluster([0, 1])


@pytest.mark.slow
def test_summary_statistics_and_figures(two_workers):
    _, out, table = two_workers
    written = summarize_sweep(out)
    written.update(sweep_figures(out))
    points = pd.read_csv(written["points"])
    assert list(points["car_t.initial_cells"]) == [5, 20] and list(points["complete"]) == [2, 2]
    for _, p in points.iterrows():
        assert p["response_ci_low"] <= p["response_rate"] <= p["response_ci_high"]
        assert sum(p[f"crs_grade_{g}"] for g in range(5)) == pytest.approx(1.0)
    g = table[table["point"] == 0]
    assert points["response_rate"][0] == g["response_at_end"].isin(["CR", "PR"]).mean()
    assert written["outcomes_vs_car_t_initial_cells"].stat().st_size > 10_000


@pytest.mark.slow
def test_morris_design_gives_salib_indices(tmp_path):
    design = {"kind": "morris", "samples": 2, "levels": 4,
              "parameters": {"car_t.initial_cells": [5, 40], "tumor.radius_sites": [3, 7]},
              "integer": ["car_t.initial_cells", "tumor.radius_sites"]}
    spec = spec_file(tmp_path, design=design, replicates=1)
    table = run_sweep(spec, tmp_path / "out", Executor(workers=1, progress=False))
    assert len(table) == 6 and (table["status"] == "complete").all()
    sens = pd.read_csv(summarize_sweep(tmp_path / "out")["sensitivity"])
    assert set(sens["parameter"]) == {"car_t.initial_cells", "tumor.radius_sites"}
    assert {"mu_star", "sigma"} <= set(sens.columns) and (sens["mu_star"] >= 0).all()
    # more tumor is more burden: the radius matters for the burden ratio's trajectory
    assert sens.loc[sens["outcome"] == "burden_ratio_at_end", "mu_star"].notna().all()


@pytest.mark.slow
def test_bad_specs_name_the_problem(tmp_path):
    bad = spec_file(tmp_path, name="b1", design={"kind": "grid", "parameters": {"car_t.no_such_key": [1]}})
    with pytest.raises(SweepError, match="car_t.no_such_key"):
        load_spec(bad)
    bad = spec_file(tmp_path, name="b2", design={"kind": "lhs", "parameters": {"car_t.initial_cells": [9, 3]}})
    with pytest.raises(SweepError, match=r"design.parameters.car_t.initial_cells: lhs needs numeric bounds"):
        load_spec(bad)
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "sweep", bad, "--out", tmp_path / "o"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.startswith("error: ") and str(bad) in r.stderr


def test_outcome_table_is_appended_row_by_row_and_read_as_the_last_row_per_task(tmp_path):
    """Finished tasks are appended to the same file (no rewrite per task); a task's newer
    row wins; a line cut short by a kill is ignored; closing compacts and sorts."""
    table = TableAppender(tmp_path, ["car_t.initial_cells"])
    path = tmp_path / "outcomes.csv"
    inode, sizes = path.stat().st_ino, [path.stat().st_size]

    def row(point, replicate, status, peak):
        return {"point": point, "replicate": replicate, "seed": 7 + point, "car_t.initial_cells": 5 * point,
                "path": f"runs/p{point}_r{replicate}.h5", "ran": True, "status": status,
                "error": "" if status == "complete" else "RuntimeError: boom, with a comma\nand a newline",
                "task_seconds": 1.5, "peak_blood_car_t": peak}

    for r in (row(1, 0, "complete", 2.5e8), row(0, 1, "failed", None), row(0, 0, "complete", float("inf"))):
        table.append(r)
        sizes.append(path.stat().st_size)
        assert path.stat().st_ino == inode and sizes[-1] > sizes[-2]
    table.append(row(0, 1, "complete", 1e8))  # the failed task, run again
    with open(path, "a") as fh:
        fh.write("2,0,99,10,runs/p2_r0.h5,True,compl")  # a kill in the middle of a row
    got = read_table(tmp_path)
    assert list(zip(got["point"], got["replicate"])) == [(0, 0), (0, 1), (1, 0)]
    assert list(got["status"]) == ["complete"] * 3 and list(got.columns) == table_columns(["car_t.initial_cells"])
    assert got["peak_blood_car_t"].tolist() == [float("inf"), 1e8, 2.5e8] and got["ran"].dtype == bool
    with pytest.raises(ValueError, match="unknown columns"):
        table.append({**row(3, 0, "complete", 1.0), "mood": "good"})
    table.close()
    # compacted once, at the end (the empty error column now reads as floats)
    pd.testing.assert_frame_equal(pd.read_csv(path), got, check_dtype=False)
    assert path.read_text().count("\n") == 4
    again = TableAppender(tmp_path, ["car_t.initial_cells"])  # a rerun appends to the compacted table
    again.append(row(2, 0, "complete", 3.0))
    again.close()
    assert len(read_table(tmp_path)) == 4


def _exit_slowly(marker: str) -> None:
    """In a worker: at its exit, take 6 s, then leave ``marker`` (a worker killed at its
    exit leaves none)."""
    import atexit  # noqa: PLC0415 - runs inside the worker process

    def slow():
        time.sleep(6)
        Path(marker).write_text("exited")

    atexit.register(slow)


@pytest.mark.slow
def test_a_sweep_lets_its_workers_exit_instead_of_killing_them(tmp_path, monkeypatch):
    """Dask kills a worker that takes more than 4 s to exit when its cluster closes, and
    logs "Worker process still alive ... killing"; a loaded machine's workers can take
    that long to tear down."""
    import tme_abm.studies.sweep as sweep  # noqa: PLC0415 - the module whose client is wrapped

    real = sweep._client
    marker = tmp_path / "exited"

    def slow_client(spec, executor):
        client, cluster = real(spec, executor)
        client.run(_exit_slowly, str(marker))
        return client, cluster

    monkeypatch.setattr(sweep, "_client", slow_client)
    table = run_sweep(spec_file(tmp_path, replicates=1), tmp_path / "out", Executor(workers=1, progress=False))
    assert (table["status"] == "complete").all()
    assert marker.read_text() == "exited"
