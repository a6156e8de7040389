"""Faults a run must survive and inputs it must refuse (issue 32): a disk that fills, a
kill in the first milliseconds, corrupted data, links out of a viewed folder, names that
would become paths, duplicate YAML keys, specs that `validate` must read, and the
frictions of a first session (the backend note, the CLI's start-up, a folder holding a
file that is not a run, the quickstart's assessment day, the memory message)."""

from __future__ import annotations

import errno
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types

import h5py
import numpy as np
import pytest
import yaml
from helpers import BASELINE, ROOT, SMALL, assert_same_run, cli, flip_bits, small

from tme_abm.config import ConfigError, check_memory, load_config, output_estimate_bytes
from tme_abm.io import RunFileError, open_run, open_runs, run, runfile
from tme_abm.io.runfile import DiskFullError

QUICK = ROOT / "configs" / "quickstart.yaml"
SETS = [a for s in SMALL for a in ("--set", s)]
# a short run for the kill tests: infusion at the start, checkpoints every 2 hours, 0.3 days
SHORT = [*SMALL, "therapy=[{kind: infusion, day: 0, dose_cells: 1.0e8}]", "time.duration_days=0.3",
         "output.checkpoint_every_min=120"]


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


# ---- a full disk --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_it_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                                   reference):
    """Another process fills the disk after the checkpoint at tick 120: the next write
    sees too little room and stops the run before HDF5 writes a byte of it."""
    path = tmp_path / "full.h5"
    real_free, real_checkpoint = runfile.free_bytes, runfile.RunFile.write_checkpoint
    full = {"now": False}

    def checkpoint(self, arrays, meta):
        real_checkpoint(self, arrays, meta)
        full["now"] = meta["steps"] >= 120

    monkeypatch.setattr(runfile.RunFile, "write_checkpoint", checkpoint)
    monkeypatch.setattr(runfile, "free_bytes", lambda p: 300 * 2**10 if full["now"] else real_free(p))
    with pytest.raises(DiskFullError, match=r"^disk full: .* MiB free in .*, the run needs ~.* MiB more; its files "
                                            r"keep the last checkpoint: free space and resume it$"):
        run(small(), path, quiet=True)
    r = open_run(path)
    assert r.status == "failed" and r.attrs["error"].startswith("DiskFullError")
    assert int(h5py.File(path, "r")["checkpoint"].attrs["tick"]) >= 120
    monkeypatch.undo()
    run(small(), path, quiet=True, resume=True)
    assert_same_run(path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raised", "unraisable"])
def test_a_write_that_meets_a_full_disk_gives_back_the_reserve_and_the_run_resumes(tmp_path, monkeypatch, reference,
                                                                                   how):
    """The race the free-space check cannot see: a write fails with ENOSPC, raised from
    h5py, or reported by h5py while it frees an object (sys.unraisablehook, the run goes
    on). The run stops after that write, gives back its lock's reserve before closing
    the file, and resumes to the uninterrupted run."""
    path = tmp_path / "race.h5"
    lock = path.with_name(path.name + ".lock")
    real_checkpoint, real_append = runfile.RunFile.write_checkpoint, runfile._append
    state = {"armed": False, "fired": False, "lock_bytes": None}

    def checkpoint(self, arrays, meta):
        real_checkpoint(self, arrays, meta)
        state["armed"] = meta["steps"] >= 120

    def append(ds, values):
        if state["armed"] and not state["fired"] and ds.name.startswith("/fields/"):
            state["fired"] = True
            state["lock_bytes"] = lock.stat().st_size
            error = OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, error message = "
                                          "'No space left on device')")
            if how == "raised":
                raise error
            sys.unraisablehook(types.SimpleNamespace(exc_type=OSError, exc_value=error, exc_traceback=None,
                                                     err_msg="Exception ignored in", object=None))
        real_append(ds, values)

    monkeypatch.setattr(runfile.RunFile, "write_checkpoint", checkpoint)
    monkeypatch.setattr(runfile, "_append", append)
    seen = {}
    real_finish = runfile.RunFile.finish

    def finish(self, status="complete", error=None):
        seen["lock_bytes_at_close"] = lock.stat().st_size
        real_finish(self, status, error)

    monkeypatch.setattr(runfile.RunFile, "finish", finish)
    with pytest.raises(DiskFullError, match="its files keep the last checkpoint: free space and resume it$"):
        run(small(), path, quiet=True)
    assert state["lock_bytes"] >= runfile.MARGIN_BYTES  # the reserve was held while the run wrote
    assert seen["lock_bytes_at_close"] < 4096  # and given back before the file was closed
    assert open_run(path).status == "failed"
    monkeypatch.undo()
    run(small(), path, quiet=True, resume=True)
    assert_same_run(path, reference)


def test_a_run_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from tme_abm.io import runner  # noqa: PLC0415 - the module whose view of the disk is replaced

    monkeypatch.setattr(runner, "free_bytes", lambda p: 2**20)
    path = tmp_path / "never.h5"
    with pytest.raises(DiskFullError, match=r"disk full: 1.0 MiB free, the run needs ~\d+\.\d MiB; free space"):
        run(small(), path, quiet=True)
    assert not path.exists() and not list(tmp_path.iterdir())
    assert output_estimate_bytes(small()) > 2**20


def _mount_namespace() -> list[str] | None:
    """A command prefix running its command as root of a new user and mount namespace
    (where it can mount a tmpfs), or None where this machine does not allow that."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--user", "--map-root-user", "--mount"]
    ok = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return prefix if ok.returncode == 0 else None


FULL_DISK = """
set -u
mount -t tmpfs -o size=8m tmpfs "$DISK"
{run} 2> "$OUT/first.err" &
pid=$!
# fill the disk once the run has written its checkpoint at tick 120 (or stop when it ends)
"$PY" - $pid <<'EOF'
import os, sys, time, h5py
path, pid = os.environ["DISK"] + "/a.h5", int(sys.argv[1])
while True:
    try:
        with h5py.File(path, "r", locking=False) as f:
            if int(f["checkpoint"].attrs["tick"]) >= 120:
                break
    except (OSError, KeyError):
        pass
    if not os.path.exists(f"/proc/{{pid}}"):
        sys.exit("the run ended before the disk was filled")
    time.sleep(0.02)
st = os.statvfs(os.environ["DISK"])
with open(os.environ["DISK"] + "/filler", "wb") as fh:
    fh.write(b"\\1" * (st.f_bavail * st.f_frsize - 400 * 1024))
EOF
wait $pid
echo $? > "$OUT/first.rc"
rm -f "$DISK/filler"
{resume} 2> "$OUT/resume.err"
echo $? > "$OUT/resume.rc"
cp "$DISK/a.h5" "$OUT/a.h5"
"""


@pytest.mark.slow
def test_a_full_tmpfs_stops_the_run_in_one_line_and_the_printed_command_resumes_it(tmp_path, reference):
    prefix = _mount_namespace()
    if prefix is None:
        if os.environ.get("TME_ABM_REQUIRE_TOOLS") == "1":
            pytest.fail("unshare cannot mount a tmpfs here (TME_ABM_REQUIRE_TOOLS=1)")
        pytest.skip("no user and mount namespaces here to mount a small tmpfs in")
    (tmp_path / "disk").mkdir()
    env = {**os.environ, "TME_ABM_BACKEND": "numpy", "DISK": str(tmp_path / "disk"), "OUT": str(tmp_path),
           "PY": sys.executable}
    tme = [sys.executable, "-m", "tme_abm.cli", "run", str(BASELINE)]
    script = FULL_DISK.format(run=shlex.join([*tme, "--out", str(tmp_path / "disk" / "a.h5"), "-q", *SETS]),
                              resume=shlex.join([*tme, "--resume", str(tmp_path / "disk" / "a.h5"), "-q", *SETS]))
    done = subprocess.run([*prefix, "bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first
    (line,) = [x for x in first.splitlines() if x.strip()]  # one line, no h5py traceback
    assert line.startswith("error: disk full: ") and "MiB free" in line and "the run needs ~" in line, line
    assert line.endswith(f"--resume {tmp_path / 'disk' / 'a.h5'}"), line
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    assert_same_run(tmp_path / "a.h5", reference)


# ---- a kill in the first milliseconds -------------------------------------------------------

@pytest.mark.slow
def test_a_kill_in_the_first_milliseconds_leaves_no_file_or_one_that_resumes(tmp_path):
    sets = [a for s in SHORT for a in ("--set", s)]
    ref = tmp_path / "ref.h5"
    run(load_config(BASELINE, SHORT), ref, quiet=True)
    env = {**os.environ, "TME_ABM_BACKEND": "numpy"}
    for delay in (0.0, 0.005, 0.02):
        path = tmp_path / f"k{delay}.h5"
        proc = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "run", BASELINE, "--out", path, "-q", *sets],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if path.exists():  # the file that appeared resumes
            r = cli("run", BASELINE, "--resume", path, "-q", *sets)
        else:  # nothing appeared: a plain run starts, whatever the killed start left
            r = cli("run", BASELINE, "--out", path, "-q", *sets)
        assert r.returncode == 0, (delay, r.stderr)
        assert_same_run(path, ref)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}")) == []


# ---- corruption -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_corrupted_field_snapshot_is_named_by_every_reader(tmp_path, reference):
    folder = tmp_path / "runs"
    folder.mkdir()
    bad = folder / "bad.h5"
    shutil.copy(reference, bad)
    shutil.copy(reference, folder / "good.h5")
    flip_bits(bad, "fields/oxygen", 3)
    with pytest.raises(RunFileError, match=r"bad.h5: corrupt data in /fields/oxygen: "):
        open_run(bad)
    table = open_runs(folder).set_index("path")
    assert table.loc[str(bad), "status"] == "unreadable" and "/fields/oxygen" in table.loc[str(bad), "error"]
    assert table.loc[str(folder / "good.h5"), "status"] == "complete"
    for args in (["summarize", bad], ["report", bad, "--out", tmp_path / "rep"]):
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = error_lines(r)
        assert "corrupt data in /fields/oxygen" in line, line
    # a folder: the good run is summarized, the bad one skipped with a note
    r = cli("summarize", folder)
    assert r.returncode == 0, r.stderr
    (note,) = error_lines(r)
    assert note.startswith(f"note: skipped {bad}: corrupt data in /fields/oxygen"), note


def test_checkpoint_arrays_carry_checksums(tmp_path):
    f = runfile.RunFile.create(tmp_path / "c.h5", config_yaml="", attrs={}, lattice_shape=(4, 5), spacing_um=20.0,
                               field_names=["oxygen"], field_units=["mmHg"], dtype="float32")
    f.write_checkpoint({"a": np.arange(10.0), "b": np.zeros((3, 3), np.int8)}, {"steps": 0, "time_min": 0.0})
    f.finish()
    with h5py.File(tmp_path / "c.h5", "r") as h:
        chunked = []
        h.visititems(lambda k, o: chunked.append((k, o.fletcher32))
                     if isinstance(o, h5py.Dataset) and o.chunks and o.dtype.kind != "O" else None)
    assert chunked and all(ok for _, ok in chunked), chunked
    assert {"checkpoint/slot0/a", "checkpoint/slot0/b", "fields/oxygen", "timeseries/time"} <= {k for k, _ in chunked}


# ---- names, keys, specs, overrides ----------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["run", QUICK, "--set", "name=..", "--replicates", "2"], "name: value '..' is not allowed"),
    (["run", QUICK, "--set", "name=../up"], "name: value '../up' is not allowed"),
    (["validate", QUICK, "--set", "name=.hidden"], "name: value '.hidden' is not allowed"),
    (["validate", BASELINE, "--set", "therapy.99.day=3"],
     "--set 'therapy.99.day=3': therapy is a list of 2 entries (indices 0 to 1); '99' is not one of them"),
])
def test_names_that_would_be_paths_and_list_indices_out_of_range_are_refused(tmp_path, args, expected):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = error_lines(r)
    assert expected in line, line
    assert not list(tmp_path.iterdir()) and not list(tmp_path.parent.glob(".._r*.h5"))


def test_a_sweep_named_as_a_path_is_refused(tmp_path):
    spec = yaml.safe_load((ROOT / "configs" / "sweeps" / "burden.yaml").read_text())
    spec["name"] = ".."
    spec["base"] = str(ROOT / "configs" / "baseline.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = cli("validate", tmp_path / "s.yaml")
    assert r.returncode == 2 and "name: value '..' is not allowed" in r.stderr, r.stderr


def test_an_experiment_name_is_a_name_not_a_path_out_of_the_experiments_folder(tmp_path):
    from tme_abm.studies.errors import SweepError  # noqa: PLC0415 - the sweeps extra
    from tme_abm.studies.experiments import find  # noqa: PLC0415

    assert find("burden").name == "burden.yaml"
    for name in ("../sweeps/burden", "../baseline", ".hidden"):
        with pytest.raises(SweepError, match=f"no experiment {re.escape(repr(name))}"):
            find(name)


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: dup\nseed: 1\ntime:\n  tick_min: 6\n  tick_min: 12\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'tick_min' on lines 4 and 5; give each key once"):
        load_config(cfg)
    r = cli("validate", cfg)
    assert r.returncode == 2 and error_lines(r) == [f"error: {cfg}: duplicate key 'tick_min' on lines 4 and 5; "
                                                    f"give each key once"], r.stderr
    cfg.write_text("name: dup\nseed: 1\nname: other\n")
    with pytest.raises(ConfigError, match="duplicate key 'name' on lines 1 and 3"):
        load_config(cfg)


def test_validate_reads_sweep_and_experiment_specs(tmp_path):
    for spec, kind in ((ROOT / "configs" / "sweeps" / "burden.yaml", "sweep"),
                       (ROOT / "configs" / "experiments" / "burden.yaml", "experiment")):
        r = cli("validate", spec)
        assert r.returncode == 0, r.stderr
        assert f"valid {kind} spec" in r.stdout, r.stdout
    data = yaml.safe_load((ROOT / "configs" / "sweeps" / "burden.yaml").read_text())
    data["base"] = str(ROOT / "configs" / "baseline.yaml")
    key = next(iter(data["design"]["parameters"]))
    data["design"] = {"kind": "list", "points": [{key: 1.0}, {"car_t.initial_cells": -5}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    r = cli("validate", tmp_path / "bad.yaml")
    assert r.returncode == 2, r.stderr
    (line,) = error_lines(r)
    assert "design point 1" in line and "car_t.initial_cells" in line, line


# ---- frictions --------------------------------------------------------------------------------

def test_version_and_help_start_without_loading_the_model():
    for args in (["--version"], ["--help"], ["run", "--help"]):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([sys.executable, "-m", "tme_abm.cli", *args], capture_output=True, text=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert r.returncode == 0, r.stderr
        assert cpu < 0.5, f"tme-abm {' '.join(args)} took {cpu:.2f} CPU-s"
    code = "import sys, tme_abm.cli; print(sorted(m for m in ('numpy', 'pydantic', 'h5py') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_clis_backend_choices_are_the_engines():
    from tme_abm.cli import BACKEND_CHOICES  # noqa: PLC0415 - the CLI keeps its own copy to start fast
    from tme_abm.engine.backend import BACKEND_CHOICES as ENGINE  # noqa: PLC0415

    assert tuple(BACKEND_CHOICES) == tuple(ENGINE)


@pytest.mark.slow
def test_the_backend_choice_is_said_only_when_asked(tmp_path):
    tiny = ["--set", "time.duration_days=0.02", "--set", "lattice.shape=[30, 30]", "--set", "tumor.radius_sites=5"]
    env = {k: v for k, v in os.environ.items() if k != "TME_ABM_BACKEND"}
    quiet = subprocess.run([sys.executable, "-m", "tme_abm.cli", "run", QUICK, "--out", tmp_path / "a.h5", "-q",
                            "--backend", "auto", *tiny], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "tme_abm.cli", "--verbose", "run", QUICK, "--out", tmp_path / "b.h5",
                           "-q", "--backend", "auto", *tiny], capture_output=True, text=True, env=env, timeout=600)
    assert loud.returncode == 0 and "INFO: backend auto: " in loud.stderr, loud.stderr


def test_the_quickstart_classifies_its_response_inside_its_run():
    cfg = load_config(QUICK)
    assert cfg.patient.assessment_day <= cfg.end_day


def test_a_memory_refusal_suggests_float32_only_to_float64_configs():
    huge = ["lattice.shape=[40000, 40000]"]
    for dtype, says in (("float32", False), ("float64", True)):
        with pytest.raises(ConfigError) as err:
            check_memory(load_config(QUICK, [*huge, f"dtype={dtype}"]), 2**30)
        assert ("float32" in str(err.value).split("; ")[-1]) is says, str(err.value)


@pytest.mark.slow
def test_summarize_of_a_folder_skips_a_file_that_is_not_a_run_with_a_note(tmp_path, reference):
    shutil.copy(reference, tmp_path / "run.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    r = cli("summarize", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "share with CRS" in r.stdout
    (note,) = error_lines(r)
    assert note == f"note: skipped {tmp_path / 'other.h5'}: HDF5 file but not a tme_abm run file (no 'format' " \
                   f"attribute 'tme_abm-run-N')", note


# ---- pictures ---------------------------------------------------------------------------------

def _overlap(a, b) -> float:
    """Area (pixels^2) two bounding boxes share."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _drawn(fig):
    """Draw ``fig`` (laid out as when saved) on an Agg canvas; returns the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - the report extra

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.slow
def test_the_fields_figure_keeps_titles_off_the_row_above_and_fills_its_page(tmp_path, reference):
    from tme_abm.viz.report import fields_figure  # noqa: PLC0415 - the report extra

    r = open_run(reference)
    fig = fields_figure(r, r.config.start_day, None, tmp_path / "fields.png")
    renderer = _drawn(fig)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    boxes = [ax.get_tightbbox(renderer) for ax in panels]  # each with its title and tick labels
    assert len(panels) == 7 * 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert _overlap(a, b) < 1.0, (a, b)
    every = [ax.get_tightbbox(renderer) for ax in fig.axes] + [fig._suptitle.get_window_extent(renderer)]
    width, height = fig.bbox.width, fig.bbox.height
    left, right = min(b.x0 for b in every), max(b.x1 for b in every)
    bottom, top = min(b.y0 for b in every), max(b.y1 for b in every)
    assert left < 0.05 * width and right > 0.95 * width and bottom < 0.05 * height and top > 0.95 * height


@pytest.mark.slow
def test_every_legend_entry_of_the_systemic_figure_has_a_visible_line(tmp_path, reference):
    from tme_abm.viz.report import systemic_figure  # noqa: PLC0415 - the report extra

    r = open_run(reference)
    ts = r.timeseries
    ts["day"] = r.config.start_day + ts["time_min"] / 1440.0
    quiet = ts.assign(blood_car_t=0.0)  # no CAR T in the blood, as in a run without an infusion
    for table in (ts, quiet):
        fig = systemic_figure(r, table, tmp_path / "systemic.png")
        top = fig.axes[0]
        for line, label in zip(*top.get_legend_handles_labels()):
            y = np.asarray(line.get_ydata(), float)
            assert np.isfinite(y).any() and line.get_linestyle() not in ("None", " ", ""), label
    labels = top.get_legend_handles_labels()[1]
    assert labels == ["tumor burden"] and any("blood CAR T: 0 throughout" in t.get_text() for t in top.texts)


def test_a_uniform_field_is_drawn_in_the_middle_colour_with_a_readable_colour_bar():
    from matplotlib import colormaps  # noqa: PLC0415 - the report extra

    from tme_abm.viz.lattice import Geometry  # noqa: PLC0415
    from tme_abm.viz.web.figures import frame_figure  # noqa: PLC0415

    fig = frame_figure(None, "cells", np.full((20, 30), 46.0), "oxygen", "mmHg", Geometry((20, 30), 20.0, 0.1, 1.0))
    _drawn(fig)
    image = fig.axes[1].images[0]
    lo, hi = image.get_clim()
    assert lo < 46.0 < hi and hi - lo > 1.0
    np.testing.assert_allclose(image.to_rgba(np.array([[46.0]]))[0, 0], colormaps["viridis"](0.5), atol=0.01)
    colour_bar = fig.axes[2]
    assert colour_bar.yaxis.get_offset_text().get_text() == ""
    ticks = [t.get_text() for t in colour_bar.get_yticklabels() if t.get_text()]
    assert any(t.replace("\u2212", "-").startswith(("45", "46", "47")) for t in ticks), ticks
