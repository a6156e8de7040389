"""No run is lost or silently corrupted: one writer per run file and per sweep folder
(real processes), --overwrite that replaces only on success, resume that is bit-exact
from any point a process can die at, and a run that loses its file fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from helpers import assert_same_run, cli, fail_at_tick

import tme_abm
from tme_abm.config import load_config
from tme_abm.io import RunFileError, run
from tme_abm.io.runner import RunTerminated, pending_path
from tme_abm.model import TMEModel

pytestmark = pytest.mark.slow  # every test here runs models (or a browser)

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"
BASELINE = ROOT / "configs" / "baseline.yaml"
ENV = {**os.environ, "TME_ABM_BACKEND": "numpy"}
# lymphodepletion on day -3, infusion on day 0: checkpoints at days -3, -2, -1, 0; events
# between them; ends at day 0.3
SMALL = ["time.burn_in_days=0", "lattice.shape=[30, 30]", "tumor.radius_sites=6", "time.duration_days=3.3",
         "monocyte.initial_cells=3",
         "granulocyte.initial_cells=3", "output.snapshot_every_min=720", "output.cell_snapshot_every_min=1440",
         "output.checkpoint_every_min=1440", "backend=numpy"]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tme_abm.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the first process ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_writer_is_refused_and_the_first_run_completes_intact(tmp_path):
    out = tmp_path / "live.h5"
    first = start("run", QUICK, "--out", out, "-q", "--set", "time.duration_days=8")  # long enough to meet
    try:
        wait_for(lambda: out.exists() and out.with_name("live.h5.lock").exists(), first, "the run started")
        for args in (["--overwrite"], []):
            second = cli("run", QUICK, "--out", out, "-q", *args)
            assert second.returncode != 0 and "Traceback" not in second.stderr
            (line,) = [x for x in second.stderr.splitlines() if not x.startswith("warning:")]
            assert line.startswith(f"error: {out}: another run is writing it (pid {first.pid} on ")
        resumed = cli("run", QUICK, "--resume", out, "-q", "--set", "time.duration_days=8")
        assert resumed.returncode != 0 and f"pid {first.pid}" in resumed.stderr
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, stderr
    r = tme_abm.open_run(out)
    assert r.status == "complete" and len(r.timeseries) == 8 * 240 + 1
    with h5py.File(out, "r") as f:  # a plain HDF5 reader agrees
        assert f["timeseries/time"].shape == (8 * 240 + 1,)
    assert not out.with_name("live.h5.lock").exists()


def test_a_second_sweep_into_a_busy_folder_is_refused(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "s", "base": str(QUICK), "seed": 3, "replicates": 2,
        # long enough that the first sweep outlasts the second CLI's start on a loaded 2-core machine
        "set": {"lattice.shape": [40, 40], "tumor.radius_sites": 6, "time.duration_days": 3.0, "backend": "numpy"},
        "design": {"kind": "grid", "parameters": {"car_t.initial_cells": [5, 20]}}}))
    out = tmp_path / "out"
    first = start("sweep", spec, "--out", out, "--workers", "1", "-q")
    try:
        wait_for(lambda: (out / ".sweep.lock").exists(), first, "the sweep started")
        second = cli("sweep", spec, "--out", out, "--workers", "1", "-q")
        assert second.returncode == 2 and "Traceback" not in second.stderr
        (line,) = [x for x in second.stderr.splitlines() if not x.startswith("warning:")]
        assert line.startswith(f"error: {out}: another sweep is running in this folder (pid {first.pid} on ")
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, stderr
    runs = sorted((out / "runs").glob("*.h5"))
    assert len(runs) == 4 and all(tme_abm.open_run(p).status == "complete" for p in runs)


def test_overwrite_replaces_the_old_run_only_when_the_new_one_completes(tmp_path, monkeypatch):
    path = tmp_path / "r.h5"
    old_cfg = load_config(BASELINE, SMALL)
    run(old_cfg, path, quiet=True)
    old_bytes = path.read_bytes()
    new_cfg = load_config(BASELINE, [*SMALL, "seed=8"])
    fail_at_tick(monkeypatch, 500)
    with pytest.raises(RuntimeError, match="fault at tick 500"):
        run(new_cfg, path, quiet=True, overwrite=True)
    assert path.read_bytes() == old_bytes  # the old result is intact
    assert tme_abm.open_run(pending_path(path)).status == "failed"
    monkeypatch.undo()
    run(new_cfg, path, quiet=True, resume=True)  # continues the new run, then replaces the old one
    assert not pending_path(path).exists() and tme_abm.open_run(path).attrs["seed"] == 8
    reference = tmp_path / "ref.h5"
    run(new_cfg, reference, quiet=True)
    assert_same_run(path, reference)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # pytest's own report of one
@pytest.mark.parametrize("sig, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, RunTerminated)])
def test_a_stop_signal_that_lands_in_a_weakref_callback_still_stops_the_run(tmp_path, monkeypatch, capsys, sig,
                                                                           raised):
    """Python swallows an exception raised in a weakref callback (or ``__del__``) and
    prints "Exception ignored"; a Ctrl-C or SIGTERM landing there must still stop the run
    after that tick, quietly, with status failed, and resume to the uninterrupted result."""
    cfg = load_config(QUICK, ["time.duration_days=0.1", "backend=numpy"])
    reference = tmp_path / "reference.h5"
    run(cfg, reference, quiet=True)
    path = tmp_path / "stopped.h5"
    original = TMEModel.step

    class Garbage:
        pass

    def signal_in_a_weakref_callback(_ref):
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler runs here, inside the callback

    def step_then_collect(self):
        original(self)
        if self.steps == 5:
            obj = Garbage()
            ref = weakref.ref(obj, signal_in_a_weakref_callback)
            del obj  # the callback runs now; its exception goes to sys.unraisablehook
            assert ref() is None

    monkeypatch.setattr(TMEModel, "step", step_then_collect)
    with pytest.raises(raised):
        run(cfg, path, quiet=True)
    assert "Exception ignored" not in capsys.readouterr().err
    assert tme_abm.open_run(path).status == "failed"
    assert tme_abm.open_run(path).timeseries["tick"].max() == 5  # stopped after that tick, not at the end
    monkeypatch.setattr(TMEModel, "step", original)
    run(cfg, path, quiet=True, resume=True)
    assert_same_run(path, reference)


def test_a_run_whose_file_is_removed_fails(tmp_path, monkeypatch):
    path = tmp_path / "gone.h5"
    original = TMEModel.step

    def remove_file(self):
        if self.steps == 10:
            path.unlink()
        original(self)

    monkeypatch.setattr(TMEModel, "step", remove_file)
    with pytest.raises(RunFileError, match="removed or replaced while the run was writing it"):
        run(load_config(QUICK, ["time.duration_days=0.1", "backend=numpy"]), path, quiet=True)


# A driver that runs the CLI and SIGKILLs its own process at one chosen point: after the
# n-th flush of the run file, or in the middle of the n-th checkpoint (after half of its
# arrays are written).
KILLER = r"""
import os, signal, sys
import h5py
from tme_abm.io.runfile import RunFile
from tme_abm.cli import main

kind, n = sys.argv[1], int(sys.argv[2])
count = {"flush": 0, "checkpoint": 0}
if kind == "flush":
    flush = h5py.File.flush
    def counted_flush(self):
        flush(self)
        count["flush"] += 1
        if count["flush"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    h5py.File.flush = counted_flush
else:
    write_checkpoint = RunFile.write_checkpoint
    create_dataset = h5py.Group.create_dataset
    def half_checkpoint(self, arrays, meta):
        count["checkpoint"] += 1
        if count["checkpoint"] == n:
            made = {"n": 0}
            def dying_create(group, *a, **kw):
                made["n"] += 1
                if made["n"] > len(arrays) // 2:
                    group.file.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return create_dataset(group, *a, **kw)
            h5py.Group.create_dataset = dying_create
        return write_checkpoint(self, arrays, meta)
    RunFile.write_checkpoint = half_checkpoint
sys.argv = ["tme-abm", *sys.argv[3:]]
main()
"""
# flushes 1-3 fall before the first checkpoint is complete (the t = 0 snapshots and rows;
# the file's creation is renamed complete and has no flush: a kill there is
# test_faults.py's first-milliseconds test); 4-5 in the first checkpoint (its slot, then
# the pointer); later ones between checkpoints and events; 29 after the last write but
# the status
KILL_POINTS = [("flush", k) for k in (1, 2, 3, 4, 5, 6, 9, 14, 20, 25, 29)] + [("checkpoint", k) for k in (1, 3)]


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    run(load_config(BASELINE, SMALL), path, quiet=True)
    with h5py.File(path, "r") as f:
        assert [e for e in f["events"][()]]  # the run has events to lose and restore
    return path


@pytest.mark.parametrize("kind, n", KILL_POINTS, ids=[f"{k}{n}" for k, n in KILL_POINTS])
def test_resume_is_bit_exact_from_any_kill_point(tmp_path, small_reference, kind, n):
    path = tmp_path / "k.h5"
    sets = [a for s in SMALL for a in ("--set", s)]
    killed = subprocess.run([sys.executable, "-c", KILLER, kind, str(n), "run", BASELINE, "--out", path, "-q", *sets],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert tme_abm.open_run(path).status == "running"
    resumed = cli("run", BASELINE, "--resume", path, "-q", *sets)
    assert resumed.returncode == 0, resumed.stderr
    assert tme_abm.open_run(path).status == "complete"
    assert_same_run(path, small_reference)
    with h5py.File(path, "r") as f:
        ticks = f["timeseries/tick"][()]  # every row once: the recorded ticks and the last
        every = load_config(BASELINE, SMALL).output.record_every_ticks
        assert np.array_equal(ticks, np.unique(np.r_[np.arange(0, ticks[-1], every), ticks[-1]]))
