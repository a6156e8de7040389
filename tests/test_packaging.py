"""The CUDA sources live in the top-level kernels/ and ship inside the wheel; a checkout
(or editable install) and an installed wheel both find them, and the installed wheel
runs its shipped configs by name from any folder; every kernel file compiles
with nvcc; CuPy kernels match their NumPy twins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tme_abm.engine.backend as backend_module
from tme_abm.config import load_config, run_work
from tme_abm.engine.backend import BackendError, kernel_source, make_backend
from tme_abm.engine.diffusion import NOFLUX, DiffusionSolver, FieldGrid, Sources
from tme_abm.io import open_run

ROOT = Path(__file__).parent.parent
KERNELS = sorted((ROOT / "kernels").glob("*.cu"))
ENTRIES = {"lod_sweep": ("lod_sweep_f32", "lod_sweep_f64", "lod_sweep_sink_f32", "lod_sweep_sink_f64"),
           "lod_rotate": ("lod_rotate_f32", "lod_rotate_f64")}
"""The kernel families and the kernels each .cu file defines."""


def test_kernels_live_at_the_top_and_a_checkout_finds_them():
    assert [k.stem for k in KERNELS] == sorted(ENTRIES)
    assert not list((ROOT / "tme_abm").rglob("*.cu"))  # one home: kernels/
    for k in KERNELS:
        assert kernel_source(k.stem) == k.resolve()
    with pytest.raises(BackendError, match="nowhere.cu not found"):
        kernel_source("nowhere")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The package built as a wheel and installed with --target outside the repository:
    (the wheel, the folder it is installed in)."""
    pytest.importorskip("hatchling")
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (built,) = (tmp / "dist").glob("tme_abm-*.whl")
    site = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(built)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return built, site


@pytest.mark.slow
def test_wheel_ships_kernels_and_installed_package_finds_them(tmp_path, wheel):
    built, target = wheel
    names = zipfile.ZipFile(built).namelist()
    for k in KERNELS:
        assert f"tme_abm/kernels/{k.name}" in names
    code = "from tme_abm.engine.backend import kernel_source; print(kernel_source('lod_sweep'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == target / "tme_abm" / "kernels" / "lod_sweep.cu"
    # the configs ship too: outside the repository the installed package lists its experiments
    for cfg in ("quickstart.yaml", "experiments/burden.yaml", "sweeps/burden.yaml", "calibration/heme_cd19.yaml"):
        assert f"tme_abm/configs/{cfg}" in names
    code = ("from tme_abm.studies.experiments import available, find; "
            "from tme_abm.config.shipped import find_calibration; "
            "from tme_abm.studies.calibration import load_calibration; "
            "print(available(), find('burden'), load_calibration(find_calibration('heme_cd19'))[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'burden'" in out.stdout and str(target / "tme_abm" / "configs" / "experiments") in out.stdout
    assert str(target / "tme_abm" / "configs" / "heme_marrow.yaml") in out.stdout  # the spec finds its config


@pytest.mark.slow
def test_an_installed_wheel_runs_and_lists_its_configs_by_name_from_any_folder(tmp_path, wheel):
    _, site = wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TME_ABM_BACKEND": "numpy"}

    def tme(*args):
        return subprocess.run([sys.executable, "-m", "tme_abm.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=600)

    listed = tme("configs")
    assert listed.returncode == 0, listed.stderr
    names = [line.split(":")[0] for line in listed.stdout.splitlines()]
    assert {"quickstart", "baseline", "mrd"} <= set(names)
    assert any(line.startswith("quickstart: Quickstart") for line in listed.stdout.splitlines())
    done = tme("run", "quickstart", "--set", "time.duration_days=0.02", "--set", "lattice.shape=[30, 30]",
               "--set", "tumor.radius_sites=5", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "runs/quickstart.h5" and (elsewhere / "runs" / "quickstart.h5").exists()
    assert open_run(elsewhere / "runs" / "quickstart.h5").status == "complete"
    for name in ("quickstart.yaml", "configs/quickstart.yaml", "experiments/burden.yaml"):
        r = tme("validate", name)
        assert r.returncode == 0 and "valid" in r.stdout, (name, r.stderr)
    r = tme("run", "no_such_config")
    assert r.returncode == 2 and "no_such_config: config file not found" in r.stderr and "quickstart" in r.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("cu", KERNELS, ids=[k.name for k in KERNELS])
def test_nvcc_compiles_kernel(cu, tmp_path):
    r = subprocess.run(["nvcc", "-std=c++14", "-ptx", str(cu), "-o", str(tmp_path / "k.ptx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    for name in ENTRIES[cu.stem]:
        assert f".entry {name}" in ptx


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_cuda_kernels_match_numpy_twins(dtype, rtol, has_cuda):
    if not has_cuda:
        pytest.skip("no usable CUDA device")
    gpu = make_backend("cupy", dtype)
    cpu = make_backend("numpy", dtype)
    rng = np.random.default_rng(0)
    shape = (33, 40, 29)
    init = rng.random((3, *shape))
    faces = np.full((3, 3, 2), NOFLUX)
    faces[0, 1, 0] = 4.0
    vessels = rng.choice(np.prod(shape), 40, replace=False)
    grid = FieldGrid(shape, 20.0, [1e5, 555.0, 0.0], [0.1, 0.01, 0.2], faces, vessels, [38.0, np.nan, 1.0])
    out = []
    for be in (cpu, gpu):
        rng2 = np.random.default_rng(1)
        s = DiffusionSolver(grid, 3.0, initial=init, backend=be)
        s.step(n_steps=2)
        xp = be.xp
        sites = xp.asarray(rng2.choice(np.prod(shape), 300, replace=False))
        upt = xp.asarray(np.array([[10.0], [0.0], [0.5]]).repeat(300, 1), dtype=be.dtype)
        s.step(Sources(sites, upt * 0.1, upt), n_steps=3)  # sink kernel on a diffusing and a D = 0 field
        out.append(be.to_host(s.values[:, 0]))
        s.close()
    np.testing.assert_allclose(out[1], out[0], rtol=rtol, atol=rtol)


def test_backend_auto_weighs_the_work_per_tick(monkeypatch):
    """auto asks for a GPU only from AUTO_GPU_MIN_WORK site-fields per tick: the baseline
    stays on the CPU, the 3D lesion and a large batch of the baseline ask for a device."""
    asked = []
    monkeypatch.setattr(backend_module, "_cupy_device_usable", lambda: (asked.append(1), (None, "no device"))[1])
    monkeypatch.delenv(backend_module.BACKEND_ENV, raising=False)
    baseline = load_config(ROOT / "configs" / "baseline.yaml")
    lesion_3d = load_config(ROOT / "configs" / "solid_3d.yaml")
    assert run_work(baseline) == 100 * 100 * (len(baseline.enabled_fields) + 1)
    assert run_work(baseline) < backend_module.AUTO_GPU_MIN_WORK <= run_work(lesion_3d)
    assert make_backend("auto", "float32", run_work(baseline)).name == "numpy" and not asked
    for work in (run_work(lesion_3d), run_work(baseline, 32), None):
        assert make_backend("auto", "float32", work).name == "numpy"  # no device here
    assert len(asked) == 3
