"""The first model: oxygen-driven tumor growth and death, Mesa integration, reproducibility."""

from __future__ import annotations

import mesa
import numpy as np

from tme_abm.agents.tumor import ALIVE, NECROTIC, TumorCells
from tme_abm.backend import make_backend
from tme_abm.config import validate_config
from tme_abm.model import TMEModel

BE = make_backend("numpy", "float64")


def small(**over):
    base = {
        "seed": 1, "lattice": {"shape": [40, 40], "vessels": {"layout": "none"}},
        "time": {"tick_min": 6, "duration_days": 1, "field_substeps": 1},
        "tumor": {"archetype": "solid", "radius_sites": 4},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_config(base)


def test_model_is_a_mesa_model_with_population_agents():
    m = TMEModel(small(), BE)
    assert isinstance(m, mesa.Model)
    assert len(m.agents) == 1 and isinstance(m.tumor, TumorCells)
    assert list(m.agents_by_type) == [TumorCells]
    m.step()
    assert m.steps == 1 and m.time_min == 6.0
    assert [name for name, _ in m.stages] == ["fields", "division", "death", "clearance"]


def test_tumor_grows_at_the_cycle_rate_where_oxygen_and_space_are_plentiful():
    """Scattered cells at 38 mmHg: N(t) ~ N0 exp(0.00072/min * t), ~2.8x per day."""
    cfg = small(lattice={"shape": [80, 80], "vessels": {"layout": "none"}},
                fields={"oxygen": {"uptake_per_min": {"tumor": 0.0},
                                   "boundary": {"default": {"kind": "dirichlet", "value": 38}}}},
                tumor={"archetype": "dispersed", "initial_cells": 60, "apoptosis_rate_per_min": 0.0})
    ratios = []
    for seed in range(4):
        m = TMEModel(cfg.model_copy(update={"seed": seed}), BE)
        n0 = len(m.tumor)
        for _ in range(cfg.time.n_ticks):
            m.step()
        ratios.append(len(m.tumor) / n0)
        occ = m.backend.to_host(m.occupancy)
        assert (occ == TumorCells.code).sum() == len(m.tumor)  # one cell per site, grid in sync
        assert len(np.unique(m.backend.to_host(m.tumor.site))) == len(m.tumor)
    expected = np.exp(0.00072 * 1440)
    assert 0.85 * expected < np.mean(ratios) < 1.1 * expected, ratios


def test_no_division_below_the_arrest_oxygen():
    cfg = small(fields={"oxygen": {"initial": 4.0, "vessel_value": None, "decay_per_min": 0.0,
                                   "uptake_per_min": {"tumor": 0.0}}},
                tumor={"archetype": "dispersed", "initial_cells": 50, "necrosis_threshold_mmHg": 3.0,
                       "necrosis_max_mmHg": 1.0})
    m = TMEModel(cfg, BE)
    for _ in range(100):
        m.step()
    assert len(m.tumor) == 50 and m.tumor.counts()["tumor_necrotic"] == 0


def test_tumor_dies_by_necrosis_without_oxygen():
    cfg = small(fields={"oxygen": {"initial": 0.0, "vessel_value": None}},
                time={"tick_min": 6, "duration_days": 0.5})
    m = TMEModel(cfg, BE)
    for _ in range(cfg.time.n_ticks):
        m.step()
    st = m.backend.to_host(m.tumor.state)
    assert (st == NECROTIC).mean() > 0.6  # 12 h at max rate 1/(6 h): 1 - exp(-2) = 86%
    assert m.tumor.counts()["tumor_alive"] == (st == ALIVE).sum()


def test_dead_cells_are_cleared_and_free_their_sites():
    cfg = small(fields={"oxygen": {"initial": 0.0, "vessel_value": None}},
                tumor={"archetype": "solid", "radius_sites": 4, "clearance_min": 60,
                       "necrosis_max_rate_per_min": 1.0})
    m = TMEModel(cfg, BE)
    n0 = len(m.tumor)
    for _ in range(15):
        m.step()
    assert len(m.tumor) < 0.2 * n0
    assert (m.backend.to_host(m.occupancy) == TumorCells.code).sum() == len(m.tumor)


def test_same_seed_same_result_and_seeds_differ():
    def final(seed):
        cfg = small(seed=seed, lattice={"shape": [40, 40], "vessels": {"layout": "random", "density": 0.01}})
        m = TMEModel(cfg, BE)
        for _ in range(40):
            m.step()
        return m.backend.to_host(m.tumor.site), m.backend.to_host(m.fields.values)

    a, b, c = final(5), final(5), final(6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_dispersed_archetype_scatters_cells():
    cfg = small(tumor={"archetype": "dispersed", "initial_cells": 100})
    m = TMEModel(cfg, BE)
    assert len(m.tumor) == 100
    coords = m.lattice.coords(m.backend.to_host(m.tumor.site))
    assert coords.std(axis=0).min() > 8  # spread over the 40x40 lattice, not a ball
