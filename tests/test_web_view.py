"""The web view (``tme-abm view``): what it reads and refuses without a browser, and the
three pages in headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against a server started as a user starts it.

In the browser: a run file's time slider changes the lattice picture (pixel
difference) and moves the time marker on the time series; an experiment folder shows its
arm table and refuses a path outside the folder; the live model's Step advances the tick
and the picture; no page logs a browser console error. ``.ci/run`` installs Chromium and
sets TME_ABM_REQUIRE_TOOLS=1, so there these tests cannot be skipped.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import flip_bits
from matplotlib.colors import to_rgb
from PIL import Image

from tme_abm.config import load_config
from tme_abm.io import Run, RunFileError, open_run, run
from tme_abm.studies.experiments import analyse
from tme_abm.studies.sweep import Executor, load_spec, run_spec
from tme_abm.viz.web.data import FolderRuns, RunFrames, ViewError, resolve_under
from tme_abm.viz.web.figures import MARKER
from tme_abm.viz.web.live import LiveModel, live_config
from tme_abm.viz.web.server import free_port

pytestmark = pytest.mark.slow  # every test here runs models (or a browser)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = {"lattice": {"dims": 2, "shape": [40, 40], "spacing_um": 20, "vessels": {"layout": "random", "density": 0.006}},
        "tumor": {"archetype": "solid", "radius_sites": 8},
        "time": {"tick_min": 12, "duration_days": 0.5, "field_substeps": 1},
        "car_t": {"initial_cells": 40}, "monocyte": {"initial_cells": 10}, "granulocyte": {"initial_cells": 10},
        "therapy": [{"kind": "lymphodepletion", "day": -0.25}, {"kind": "infusion", "day": 0, "dose_cells": 1.0e8}],
        "output": {"snapshot_every_min": 120, "cell_snapshot_every_min": 120, "checkpoint_every_min": 720}}


def _config(tmp: Path, name: str, **changes) -> Path:
    data = {"name": name, "seed": 5, "backend": "numpy", **TINY, **changes}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served folder holding a run and an experiment, a config for the live view, and a
    run file outside the folder."""
    tmp = tmp_path_factory.mktemp("view")
    root = tmp / "served"
    root.mkdir()
    config = _config(tmp, "tiny")
    run(load_config(config), root / "tiny.h5", quiet=True)
    run(load_config(config), tmp / "outside.h5", quiet=True)
    spec = {"name": "tiny-experiment", "base": str(config), "seed": 11, "replicates": 2,
            "set": {"patient.assessment_day": 0.25},  # the tiny runs' last day
            "design": {"kind": "list", "points": [{"monocyte.recruit_per_vessel_per_min": 1.0e-5},
                                                  {"monocyte.recruit_per_vessel_per_min": 1.0e-3}]},
            "experiment": {"question": "does myeloid recruitment matter in the view's test?",
                           "arms": ["few monocytes", "many monocytes"], "assessment_day": 0.25, "correction": "holm",
                           "expect": [{"metric": "response_rate", "higher": "few monocytes",
                                       "lower": "many monocytes", "test": "fisher_exact", "alpha": 0.05}]}}
    spec_path = tmp / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    loaded, base = load_spec(spec_path)
    run_spec(loaded, base, root / "experiment", Executor(workers=1, progress=False))
    analyse(root / "experiment")
    return {"root": root, "run": root / "tiny.h5", "experiment": root / "experiment", "config": config,
            "outside": tmp / "outside.h5"}


# ---- without a browser ------------------------------------------------------------------

def test_paths_outside_the_served_folder_are_refused(site, tmp_path):
    root = site["root"]
    assert resolve_under(root, "tiny.h5") == (root / "tiny.h5").resolve()
    assert resolve_under(root, str(root / "tiny.h5")) == (root / "tiny.h5").resolve()
    for bad in ("../outside.h5", str(site["outside"]), "experiment/../../outside.h5", "/etc/passwd"):
        with pytest.raises(ViewError, match="outside the folder"):
            resolve_under(root, bad)
    link = root / "sneaky.h5"
    link.symlink_to(site["outside"])
    try:
        with pytest.raises(ViewError, match="outside the folder"):
            resolve_under(root, "sneaky.h5")
    finally:
        link.unlink()
    with pytest.raises(ViewError, match="no such file"):
        resolve_under(root, "missing.h5")


def _damaged_folder(site, tmp_path) -> Path:
    """A folder with a good run, a copy with flipped bits in one field snapshot, and a
    link to a run outside it."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copy(site["run"], folder / "good.h5")
    shutil.copy(site["run"], folder / "corrupt.h5")
    flip_bits(folder / "corrupt.h5", "fields/oxygen", 2)
    (folder / "link.h5").symlink_to(site["outside"])
    return folder


def test_a_folder_lists_a_link_outside_as_refused_without_reading_it(site, tmp_path, monkeypatch):
    folder = _damaged_folder(site, tmp_path)
    opened = []
    real = Run.__init__

    def recording(self, path, check=True):
        opened.append(Path(path).resolve())
        real(self, path, check)

    monkeypatch.setattr(Run, "__init__", recording)
    data = FolderRuns(folder)
    assert site["outside"].resolve() not in opened and (folder / "good.h5").resolve() in opened
    problems = data.problems.set_index("path")
    assert problems.loc["link.h5", "status"] == "refused" and "outside this folder" in problems.loc["link.h5", "error"]
    assert problems.loc["corrupt.h5", "status"] == "unreadable"
    assert "corrupt data in /fields/oxygen" in problems.loc["corrupt.h5", "error"]
    assert list(data.runs["path"]) == ["good.h5"]


def test_run_frames_show_the_last_snapshot_at_or_before_the_slider_time(site):
    frames = RunFrames(site["run"])
    r = open_run(site["run"])
    np.testing.assert_array_equal(frames.times_min, np.union1d(r.cell_times, r.field_times))
    t = float(r.cell_times[2]) + 1.0  # between two snapshots: the earlier one shows
    cells, when = frames.cells_at(t)
    assert when == r.cell_times[2]
    assert cells.equals(r.cells(2))
    plane, when = frames.field_at("oxygen", t)
    assert when == r.field_times[2]
    np.testing.assert_array_equal(plane, r.field("oxygen", 2))
    assert frames.cells_at(-1.0) is None


def test_a_run_being_written_is_read_without_blocking_its_writer(tmp_path):
    config = _config(tmp_path, "long", time={"tick_min": 12, "duration_days": 8, "field_substeps": 1})
    path = tmp_path / "long.h5"
    writer = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "run", str(config), "--out", str(path), "-q"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                frames = RunFrames(path)
                if len(frames.cell_times) >= 2:
                    break
            except RunFileError:  # not created yet
                pass
            assert time.time() < deadline and writer.poll() is None, "the run ended before it could be read"
            time.sleep(0.2)
        assert frames.status == "running"
        seen = len(frames.times_min)
        cells, _ = frames.cells_at(frames.times_min[-1])
        assert len(cells) > 0
    finally:
        _, err = writer.communicate(timeout=600)
    assert writer.returncode == 0, err
    frames.refresh()
    assert frames.status == "complete" and len(frames.times_min) > seen


def test_a_3d_run_reads_one_z_plane(tmp_path):
    config = _config(tmp_path, "tiny3d", lattice={"dims": 3, "shape": [6, 8, 10], "spacing_um": 20,
                                                  "vessels": {"layout": "none"}},
                     tumor={"archetype": "solid", "radius_sites": 2}, car_t={"initial_cells": 4},
                     monocyte={"initial_cells": 0}, granulocyte={"initial_cells": 0},
                     time={"tick_min": 12, "duration_days": 0.1}, therapy=[])
    path = tmp_path / "r3.h5"
    run(load_config(config), path, quiet=True)
    frames = RunFrames(path)
    plane, _ = frames.field_at("oxygen", 1e9, z=4)
    np.testing.assert_array_equal(plane, open_run(path).field("oxygen", -1)[4])
    with pytest.raises(IndexError, match="no z plane 6"):
        open_run(path).field("oxygen", -1, z=6)


def test_folder_arms_match_the_experiment_analysis(site):
    data = FolderRuns(site["experiment"])
    assert data.kind == "experiment" and data.names == ["few monocytes", "many monocytes"]
    import pandas as pd  # noqa: PLC0415 - only this test reads the analysis table
    saved = pd.read_csv(site["experiment"] / "experiment" / "arms.csv")
    pd.testing.assert_frame_equal(data.arms[saved.columns].reset_index(drop=True), saved, check_dtype=False)
    plain = FolderRuns(site["root"])  # any folder: arms are the configs' names
    assert plain.kind == "runs" and len(plain.runs) == 5
    assert set(plain.runs["path"]) >= {"tiny.h5"}


def test_a_plain_sweep_is_labelled_by_its_points_and_its_time_courses_read_from_the_runs(site, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(site["experiment"], sweep, ignore=shutil.ignore_patterns("experiment"))
    manifest = yaml.safe_load((sweep / "sweep.yaml").read_text())
    manifest["spec"].pop("experiment")
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(manifest))
    data = FolderRuns(sweep)
    assert data.kind == "sweep"
    assert data.names == ["recruit_per_vessel_per_min=1e-05", "recruit_per_vessel_per_min=0.001"]
    assert list(data.arms["runs"]) == [2, 2]
    tc = data.timecourses()
    day0 = tc[(tc["series"] == "blood_car_t") & (tc["day"] == 0.0)]
    assert list(day0["runs"]) == [2, 2] and set(day0["arm"]) == set(data.names)


def test_live_controls_edit_the_config(site):
    base = load_config(site["config"])
    cfg = live_config(base, log10_dose=9.0, log10_burden_scale=6.0, myeloid_recruitment=2.0, a2ar_ko=True,
                      lymphodepletion_days=3.0)
    infusions = [e for e in cfg.therapy if e.kind == "infusion"]
    assert [e.dose_cells for e in infusions] == [1.0e9]
    assert infusions[0].product.edits == ["a2ar_ko"] and cfg.car_t.product.edits == ["a2ar_ko"]
    assert [e.day for e in cfg.therapy if e.kind == "lymphodepletion"] == [-3.0]
    assert cfg.start_day + cfg.time.duration_days == pytest.approx(base.start_day + base.time.duration_days)
    assert cfg.patient.burden_scale == pytest.approx(1.0e6)
    assert cfg.monocyte.recruit_per_vessel_per_min == pytest.approx(2 * base.monocyte.recruit_per_vessel_per_min)
    assert cfg.granulocyte.recruit_per_vessel_per_min == pytest.approx(
        2 * base.granulocyte.recruit_per_vessel_per_min)
    none = live_config(base, 8.0, 5.0, 1.0, False, 0.0)
    assert [e.kind for e in none.therapy] == ["infusion"]
    no_infusion = base.model_copy(update={"therapy": []})
    added = live_config(no_infusion, 7.5, 5.0, 1.0, False, 0.0)
    assert [(e.kind, e.day, e.dose_cells) for e in added.therapy] == [("infusion", 0.0, pytest.approx(10 ** 7.5))]


def test_live_model_keeps_a_row_per_tick(site):
    m = LiveModel(str(site["config"]), seed=3)
    m.step()
    m.step()
    assert [r["tick"] for r in m.rows] == [0.0, 1.0, 2.0]


def _view(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tme_abm.cli", "view", *args], capture_output=True, text=True,
                          timeout=120)


def test_view_refuses_bad_arguments_in_one_line(site, tmp_path):
    for args, message in ((["--live", str(site["config"]), str(site["run"])], "not both"), ([], "not both"),
                          ([str(tmp_path / "nothing")], "no such file or folder")):
        out = _view(*args)
        assert out.returncode == 2, out
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("lattice: {dims: 4}\n")
    out = _view("--live", str(bad))
    assert out.returncode == 2 and "lattice.dims" in out.stderr


class Served:
    """``tme-abm view ARGS`` in a subprocess on a free port, until closed."""

    def __init__(self, *args: str, host: str = "127.0.0.1"):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tme_abm.cli", "view", *args, "--host", host,
                                      "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.address = self.proc.stdout.readline().strip().split(": ", 1)[-1].split(" ")[0]
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 60
        import urllib.request  # noqa: PLC0415 - only the served tests poll a URL
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"view did not start: {self.proc.stderr.read()}") from None
                time.sleep(0.3)

    def close(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def test_view_binds_to_localhost_and_warns_when_opened_wider(site):
    s = Served(str(site["run"]))
    try:
        assert s.address == f"http://127.0.0.1:{s.port}/"
    finally:
        err = s.close()
    assert "warning: serving on" not in err
    s = Served(str(site["run"]), host="0.0.0.0")
    err = s.close()
    assert "warning: serving on 0.0.0.0" in err


# ---- in headless Chromium -----------------------------------------------------------------

def _chromium():
    paths = shutil.which("chromium"), shutil.which("chromedriver")
    if None in paths:
        if os.environ.get("TME_ABM_REQUIRE_TOOLS") == "1":
            pytest.fail("chromium and chromedriver are required here (TME_ABM_REQUIRE_TOOLS=1) but not on PATH")
        pytest.skip("chromium or chromedriver not on PATH (Debian: chromium, chromium-driver)")
    return paths


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver  # noqa: PLC0415 - only the browser tests need Selenium
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    chromium, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # no sandbox as root in CI; no background traffic on a closed network
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1800", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)
    yield d
    d.quit()


class Page:
    """One page in the browser: waiting for elements and reading pictures."""

    def __init__(self, driver, url: str):
        self.d = driver
        self.d.get("about:blank")  # leave the last page (its server may be gone) before reading the log
        self.d.get_log("browser")  # drop what earlier pages logged
        self.d.get(url)

    def find(self, css: str, timeout: float = 90):
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [e for e in self.d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
            if found:
                return found[0]
            time.sleep(0.3)
        raise AssertionError(f"{css} did not appear in {timeout} s")

    def text_when(self, css: str, ok, timeout: float = 60) -> str:
        """The text of ``css`` once ``ok(text)`` holds (pages fill in after they appear)."""
        deadline = time.time() + timeout
        while True:
            text = self.find(css).text
            if ok(text):
                return text
            if time.time() > deadline:
                raise AssertionError(f"{css} reads {text!r} after {timeout} s")
            time.sleep(0.3)

    def text_changes(self, css: str, before: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            now = self.find(css).text
            if now != before:
                return now
            time.sleep(0.3)
        raise AssertionError(f"{css} still reads {before!r} after {timeout} s")

    def picture(self, css: str) -> np.ndarray:
        """(h, w, 3) pixels of the image inside ``css``, once it has stopped changing."""
        last = None
        for _ in range(40):
            img = np.asarray(Image.open(io.BytesIO(self.find(f"{css} img").screenshot_as_png)).convert("RGB"))
            if last is not None and img.shape == last.shape and np.array_equal(img, last):
                return img
            last = img
            time.sleep(0.5)
        return last

    def text(self) -> str:
        """What the page shows, as text."""
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        return self.d.find_element(By.TAG_NAME, "body").text

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.d.get_log("browser") if e["level"] == "SEVERE"]

    def type_into(self, label: str, text: str) -> None:
        from selenium.webdriver.common.by import By  # noqa: PLC0415
        from selenium.webdriver.common.keys import Keys  # noqa: PLC0415

        field = self.d.find_element(By.XPATH, f"//label[text()='{label}']/following-sibling::input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(text)
        deadline = time.time() + 10
        while field.get_attribute("value") != text and time.time() < deadline:
            time.sleep(0.2)
        field.send_keys(Keys.ENTER)


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels that differ visibly between two pictures of one size."""
    assert a.shape == b.shape
    return float((np.abs(a.astype(int) - b.astype(int)).sum(axis=-1) > 30).mean())


def _marker_column(img: np.ndarray) -> float:
    """Mean x pixel of the time marker's colour in a time-series picture."""
    cols = np.nonzero(np.abs(img.astype(int) - np.array(to_rgb(MARKER)) * 255).sum(axis=-1) < 40)[1]
    assert len(cols), "no time marker in the picture"
    return float(np.median(cols))


def test_run_page_slider_moves_the_picture_and_the_time_marker(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415

    s = Served(str(site["run"]))
    try:
        page = Page(browser, s.url)
        before = page.picture(".tme-lattice")
        marker = _marker_column(page.picture(".tme-timeseries"))
        label = page.find(".tme-time").text
        assert label.startswith("day -0.25")  # the first snapshot: the run starts at lymphodepletion
        slider = page.find(".v-slider")
        ActionChains(browser).move_to_element_with_offset(slider, slider.size["width"] // 4, 0).click().perform()
        assert page.text_changes(".tme-time", label).startswith("day 0.")
        time.sleep(1)
        after = page.picture(".tme-lattice")
        assert _changed(before, after) > 0.01
        assert _marker_column(page.picture(".tme-timeseries")) > marker + 50
        page.text_when(".tme-outcomes", lambda t: t.count("response_at_end") == 1)
        assert page.console_errors() == []
    finally:
        s.close()


def test_experiment_page_shows_arms_and_refuses_paths_outside(site, browser):
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    s = Served(str(site["experiment"]))
    try:
        page = Page(browser, s.url)
        arms = page.text_when(".tme-arms", lambda t: "many monocytes" in t).splitlines()
        assert [line.split(" 2 0 ")[0] for line in arms[1:]] == ["few monocytes", "many monocytes"]  # runs, failed
        page.text_when(".tme-runs", lambda t: t.count(".h5") == 4)
        page.type_into("path under this folder", "../tiny.h5")
        page.text_when(".tme-error", lambda t: "outside the folder" in t)
        # a click on a run (its cell's menu, "open this run") opens it
        cell = page.find(".tme-runs td[title$='.h5']")
        clicked = Path(cell.get_attribute("title")).name
        cell.find_element(By.CSS_SELECTOR, ".solara-data-table-menu").click()
        page.find(".menuable__content__active .v-list-item").click()
        assert page.find(".tme-lattice img").size["width"] > 100
        page.text_when(".tme-run-title", lambda t: t == f"{clicked}: status complete")
        typed = FolderRuns(site["experiment"]).runs["path"][1]
        page.type_into("path under this folder", typed)
        assert page.text_changes(".tme-run-title", f"{clicked}: status complete").startswith(Path(typed).name)
        assert page.console_errors() == []
    finally:
        s.close()


def test_corrupt_data_and_links_outside_are_lines_in_the_page_not_tracebacks(site, browser, tmp_path):
    folder = _damaged_folder(site, tmp_path)
    s = Served(str(folder))
    try:
        page = Page(browser, s.url)
        problems = page.text_when(".tme-problems", lambda t: "link.h5" in t and "corrupt.h5" in t)
        assert "refused" in problems and "corrupt data in /fields/oxygen" in problems
        page.type_into("path under this folder", "corrupt.h5")
        page.text_when(".tme-error", lambda t: "corrupt data in /fields/oxygen" in t)
        assert "Traceback" not in page.text()
    finally:
        s.close()
    s = Served(str(folder / "corrupt.h5"))
    try:
        page = Page(browser, s.url)
        page.text_when(".tme-error", lambda t: "corrupt.h5: corrupt data in /fields/oxygen" in t)
        assert "Traceback" not in page.text()
    finally:
        s.close()


def test_live_page_steps_the_model(site, browser):
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    s = Served("--live", str(site["config"]))
    try:
        page = Page(browser, s.url)
        page.text_when(".tme-tick", lambda t: t.startswith("tick 0,"))
        before = page.picture(".tme-lattice")
        def button(label: str):
            return next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip().lower() == label)

        button("step").click()
        assert page.text_changes(".tme-tick", "tick 0, day -0.25").startswith("tick 1,")
        assert _changed(before, page.picture(".tme-lattice")) > 0.001
        # Reset builds a new model from the controls (Mesa's SolaraViz calls LiveModel(**controls))
        button("reset").click()
        page.text_when(".tme-tick", lambda t: t.startswith("tick 0,"))
        assert page.console_errors() == []
    finally:
        s.close()
