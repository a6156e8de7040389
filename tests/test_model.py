"""The model shell: Mesa integration, staged schedule, reproducibility, bookkeeping."""

from __future__ import annotations

import inspect

import mesa
import numpy as np
import pytest

from tme_abm.bench import bench_model
from tme_abm.biology.populations import CarTCells, Granulocytes, Monocytes, TumorCells
from tme_abm.config import validate_config
from tme_abm.engine.backend import Backend, make_backend
from tme_abm.model import REPORTED, TMEModel

BE = make_backend("numpy", "float64")


def busy(**over):
    """A small lattice with all four populations active."""
    base = {
        "seed": 1, "lattice": {"shape": [40, 40], "vessels": {"layout": "random", "density": 0.02}},
        "time": {"tick_min": 6, "duration_days": 1, "field_substeps": 2},
        "tumor": {"archetype": "solid", "radius_sites": 8},
        "car_t": {"initial_cells": 60, "arrival_per_vessel_per_min": 0.002},
        "monocyte": {"initial_cells": 20, "recruit_per_vessel_per_min": 0.002},
        "granulocyte": {"initial_cells": 20, "recruit_per_vessel_per_min": 0.002},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_config(base)


def test_model_is_a_mesa_model_with_population_agents():
    m = TMEModel(busy(), backend=BE)
    assert isinstance(m, mesa.Model)
    assert len(m.agents) == 4
    assert set(m.agents_by_type) == {TumorCells, CarTCells, Monocytes, Granulocytes}
    m.step()
    assert m.steps == 1 and m.time_min == 6.0
    names = [s.name for s in m.scheduler.stages]
    assert names == ["therapy", "fields", "sensing", "engagement", "movement", "division_recruitment",
                     "death_clearance", "systemic", "secretion"]
    m.step()
    df = m.datacollector.get_model_vars_dataframe()
    assert list(df.columns) == list(REPORTED) and len(df) == 3  # the initial state and the state after each tick
    assert df["car_t_effector"].iloc[0] == 60 and df["hypoxic_fraction"].between(0, 1).all()
    assert df.iloc[-1].to_dict() == {k: m.current_row()[k] for k in REPORTED}  # the final state is recorded
    assert df["tick"].tolist() == [0, 1, 2]


def test_the_datacollector_records_on_the_time_series_schedule_and_rows_are_made_only_then(monkeypatch):
    """With ``record_every_ticks: 4`` the DataCollector keeps ticks 0, 4, 8 and the last
    one, and the rows (the medians among them) are computed for those ticks only."""
    made = []
    original = TMEModel.current_rows
    monkeypatch.setattr(TMEModel, "current_rows", lambda self: made.append(self.steps) or original(self))
    m = TMEModel(busy(output={"record_every_ticks": 4}, time={"duration_days": 0.11}), backend=BE)
    while m.running:
        m.step()
    df = m.datacollector.get_model_vars_dataframe()
    assert df["tick"].tolist() == [0, 4, 8, 12, 16, 20, 24, 27]  # 0.11 days: 27 ticks of 6 min
    assert sorted(set(made)) == [0, 4, 8, 12, 16, 20, 24, 27]


def _sites_ok(m):
    occ = m.backend.to_host(m.occupancy)
    all_sites = np.concatenate([m.backend.to_host(p.site) for p in m.populations])
    assert len(np.unique(all_sites)) == len(all_sites), "two cells share a site"
    assert not np.isin(all_sites, m.lattice.vessel_sites).any(), "a cell sits on a vessel"
    for p in m.populations:
        assert (occ[m.backend.to_host(p.site)] == p.code).all()
    assert (occ > 0).sum() == len(all_sites)


def test_site_exclusion_and_counts_change_only_through_events():
    m = TMEModel(busy(), backend=BE)
    _sites_ok(m)
    for _ in range(60):
        before = {p.kind: len(p) for p in m.populations}
        m.step()
        _sites_ok(m)
        for p in m.populations:
            e = p.events
            removed = e["cleared"] if p.kind == "tumor" else e["died"] + e["cleared"] + e["left"]
            assert len(p) - before[p.kind] == e["born"] + e["arrived"] - removed, (p.kind, e)
    assert m.current_row()["car_t_kills"] > 0 and m.current_row()["monocytes"] > 0


def _final_state(cfg, permute=False):
    m = TMEModel(cfg, backend=BE)
    if permute:  # the same cells in a different memory order
        for p in m.populations:
            perm = np.random.default_rng(0).permutation(len(p))
            for k in p.data:
                p.data[k] = p.data[k][perm]
            p._version += 1  # as add/remove/move do: cached per-cell signals are stale
    for _ in range(30):
        m.step()
    out = {}
    for p in m.populations:
        order = np.argsort(m.backend.to_host(p.id))
        out.update({f"{p.kind}.{k}": m.backend.to_host(v)[order] for k, v in p.data.items()})
    out["fields"] = m.backend.to_host(m.fields.values)
    return out


@pytest.mark.slow
def test_same_seed_identical_different_seed_differs_and_memory_order_is_irrelevant():
    a, b, c = _final_state(busy(seed=5)), _final_state(busy(seed=5)), _final_state(busy(seed=6))
    d = _final_state(busy(seed=5), permute=True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a[k], d[k], err_msg=k)
    assert not np.array_equal(a["car_t.site"], c["car_t.site"])


def test_dispersed_archetype_scatters_cells():
    m = TMEModel(busy(tumor={"archetype": "dispersed", "initial_cells": 100}), backend=BE)
    assert len(m.tumor) == 100
    coords = m.lattice.coords(m.backend.to_host(m.tumor.site))
    assert coords.std(axis=0).min() > 8  # spread over the 40x40 lattice, not a ball


def test_batch_run_works_for_small_cpu_runs():
    parameters = {"config": [busy().model_dump(mode="json")], "backend": [BE], "car_t.initial_cells": [0, 40],
                  "car_t.arrival_per_vessel_per_min": 0.0, "time.duration_days": 0.05}
    if "rng" in inspect.signature(mesa.batch_run).parameters:  # Mesa 3.5: batch_run passes the seeds itself
        seeds = {"rng": [1, 2]}
    else:  # Mesa 3.3: a seed is one more parameter
        seeds = {}
        parameters["seed"] = [1, 2]
    results = mesa.batch_run(TMEModel, parameters=parameters, max_steps=100, display_progress=False, **seeds)
    assert len(results) == 4
    by = {(r["seed"], r["car_t.initial_cells"]): r for r in results}
    assert set(by) == {(1, 0), (1, 40), (2, 0), (2, 40)}
    # 0.05 days = 12 ticks, then running = False; Mesa 3.3's batch_run reports the last
    # row's step minus one (11), Mesa 3.5's the model's steps (12)
    assert {r["Step"] for r in results} == ({11} if mesa.__version__.startswith("3.3") else {12})
    assert by[(1, 0)]["car_t_effector"] == 0 and by[(1, 40)]["car_t_effector"] > 0


def test_fields_every_k_ticks_solves_over_k_ticks_at_once():
    """With time.fields_every_ticks = 2 the fields change on ticks 1, 3, ... only, and a
    solve spans both ticks (a decay-only field: backward Euler split over 2 axes, dt = 12)."""
    zero = {t: 0.0 for t in ("tumor", "car_t", "monocyte", "granulocyte")}
    cfg = busy(time={"tick_min": 6, "duration_days": 1, "field_substeps": 1, "fields_every_ticks": 2},
               fields={"decaying": {"new": True, "initial": 10.0, "diffusion_um2_per_min": 0.0, "decay_per_min": 0.05,
                                    "secretion_per_min": zero}})
    m = TMEModel(cfg, backend=BE)
    values = []
    for _ in range(4):
        m.step()
        values.append(float(m.backend.to_host(m.fields.field("decaying")).mean()))
    one_solve = 10.0 / (1 + 0.05 * 12 / 2) ** 2
    np.testing.assert_allclose(values, [one_solve, one_solve, one_solve / (1 + 0.3) ** 2, one_solve / 1.3**2],
                               rtol=1e-12)


def test_sources_are_collected_only_before_a_solve_and_the_run_is_the_same(monkeypatch):
    """With time.fields_every_ticks = 3 the secretion stage collects the sources at the end
    of ticks 3, 6, ... only (the ticks before a solve; plus once when the model is built),
    and the run equals one that collects them at the end of every tick."""
    cfg = busy(time={"duration_days": 0.1, "fields_every_ticks": 3})  # 24 ticks
    m = TMEModel(cfg, backend=BE)
    collected = []
    sources = m.fields.sources
    monkeypatch.setattr(m.fields, "sources", lambda pops: collected.append(m.steps) or sources(pops))
    while m.running:
        m.step()
    assert collected == [3, 6, 9, 12, 15, 18, 21, 24]

    def every_tick(model):
        model.sources = model.fields.sources(model.populations)

    monkeypatch.setattr(TMEModel, "collect_sources", every_tick)
    every = TMEModel(cfg, backend=BE)
    while every.running:
        every.step()
    np.testing.assert_array_equal(BE.to_host(every.fields.values), BE.to_host(m.fields.values))
    a, b = m.datacollector.get_model_vars_dataframe(), every.datacollector.get_model_vars_dataframe()
    assert a.equals(b)


def test_stage_timers_wait_for_the_device_only_when_benchmarking(monkeypatch):
    """A run never waits for the device between stages; ``bench model`` makes every stage
    wait, so its stage seconds include the GPU's work and not only the launches."""
    waits = []
    monkeypatch.setattr(Backend, "synchronize", lambda self: waits.append(1))
    m = TMEModel(busy(), backend=BE)
    assert m.scheduler.synchronize is None
    m.step()
    assert waits == []
    cfg = busy(time={"duration_days": 0.02})  # 5 ticks
    result = bench_model(cfg)
    stages = len(m.scheduler.stages)
    assert len(waits) == 2 + stages * result["ticks"]  # before, after, and at the end of every stage
