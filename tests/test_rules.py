"""Each rule in an isolated mini-scenario, with expectations computed from the config.

Fields are held fixed (no diffusion, decay, secretion or uptake) so each scenario
isolates one rule; statistical checks pool several seeds and allow 4 standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BE, OFF, SEEDS, fixed, grid_sites, pairs_model, scenario, within

from tme_abm.biology.populations.population import occurs
from tme_abm.biology.rules import RuleSet, apply_edits
from tme_abm.biology.rules import hill as hill_impl
from tme_abm.config import validate_config
from tme_abm.engine import moves
from tme_abm.model import TMEModel


def hill(s, K, n):
    return s**n / (K**n + s**n)


@pytest.mark.parametrize("power", [1, 2, 3, 6, 8, 2.5, 40])
def test_hill_function_matches_its_closed_form(power):
    s = np.array([0.0, 0.1, 1.0, 4.9, 5.0, 7.0, 100.0, 1e30])
    expected = np.array([x**power / (5.0**power + x**power) if x < 1e3 else 1.0 for x in s])
    np.testing.assert_allclose(hill_impl(s, 5.0, power, np), expected, rtol=1e-12, atol=1e-300)
    assert hill_impl(np.array([5.0]), 5.0, power, np)[0] == pytest.approx(0.5)


def test_occurs_equals_the_direct_bernoulli_test():
    rng = np.random.default_rng(4)
    u = rng.random(200_000)
    rates = np.concatenate([rng.random(100_000) * 1e-3, rng.random(100_000) * 5.0])
    np.testing.assert_array_equal(occurs(u, rates, 6.0), u < -np.expm1(-rates * 6.0))
    np.testing.assert_array_equal(occurs(u, 0.01, 6.0), u < -np.expm1(-0.06))


# ---- tumor -----------------------------------------------------------------------------

def test_lone_tumor_cells_divide_at_the_configured_rate_in_normoxia():
    births = trials = 0
    for seed in SEEDS:
        m = TMEModel(scenario(tumor={"divide_per_min": 0.05}, seed=seed), backend=BE)
        ys, xs = grid_sites(m.lattice.shape, 3)
        m.tumor.add(np.ravel_multi_index((ys, xs), m.lattice.shape), antigen=np.ones(len(ys)))
        m.step()
        births += m.tumor.events["born"]
        trials += len(ys)
    factor = 1 - 1.0 * (1 - hill(38.0, 6.5, 6))  # the default hypoxia rule at 38 mmHg
    assert within(births, trials, 1 - np.exp(-0.05 * factor * 6)), births / trials


def test_no_division_under_anoxia():
    m = TMEModel(scenario(fields={"oxygen": fixed(0.0)}, tumor={"divide_per_min": 0.05, "necrosis_per_min": 0.0}),
                 backend=BE)
    ys, xs = grid_sites(m.lattice.shape, 3)
    m.tumor.add(np.ravel_multi_index((ys, xs), m.lattice.shape))
    born = 0
    for _ in range(20):
        m.step()
        born += m.tumor.events["born"]
    assert born == 0 and len(m.tumor) == len(ys)


@pytest.mark.parametrize("o2, expect_rate", [(1.0, True), (20.0, False)])
def test_necrosis_below_the_threshold_only(o2, expect_rate):
    died = trials = 0
    for seed in SEEDS:
        m = TMEModel(scenario(fields={"oxygen": fixed(o2)}, tumor={"necrosis_per_min": 0.05}, seed=seed), backend=BE)
        ys, xs = grid_sites(m.lattice.shape, 3)
        m.tumor.add(np.ravel_multi_index((ys, xs), m.lattice.shape))
        m.step()
        died += m.tumor.counts()["tumor_necrotic"]
        trials += len(ys)
    p = 1 - np.exp(-0.05 * (1 - hill(o2, 3.75, 8)) * 6)
    if expect_rate:
        assert p > 0.2 and within(died, trials, p)
    else:
        assert died == 0


# ---- CAR T engagement and killing --------------------------------------------------------

def kills_after_one_engagement(**kw) -> tuple[int, int]:
    kills = trials = 0
    for seed in SEEDS:
        m, n = pairs_model(seed, **kw)
        m.step()  # engage
        m.step()  # the engagement ends: kill or not
        kills += m.tumor.counts()["tumor_killed"]
        trials += n
    return kills, trials


def test_car_t_next_to_antigen_high_tumor_kills_at_the_configured_rate():
    kills, n = kills_after_one_engagement()
    assert within(kills, n, 0.6), kills / n


def test_car_t_never_engages_antigen_negative_tumor():
    m, n = pairs_model(antigen=0.0)
    for _ in range(20):
        m.step()
        assert int(m.car_t.engaged.sum()) == 0
    assert m.tumor.counts()["tumor_killed"] == 0


def test_adenosine_at_half_max_halves_killing_and_a2ar_knockout_removes_it():
    only_adenosine = {n: OFF for n in ("acidity", "hypoxia", "monocyte_contact", "granulocyte_contact")}
    held = {"adenosine": fixed(10.0)}  # the default half-max
    kills, n = kills_after_one_engagement(fields=held, kill_rules=only_adenosine)
    assert within(kills, n, 0.6 * 0.5), kills / n
    kills, n = kills_after_one_engagement(fields=held, kill_rules=only_adenosine,
                                          car_t={"product": {"edits": ["a2ar_ko"]}})
    assert within(kills, n, 0.6), kills / n


def test_rule_factor_and_edits_touch_named_car_t_modulators_only():
    cfg = validate_config({"car_t": {"product": {"edits": ["a2ar_ko", "pd1_ko"]}}})
    neutral = {"adenosine": np.array([10.0]), "protons": np.array([0.0]), "oxygen": np.array([1e6]),
               "contact:monocyte": np.array([0]), "contact:granulocyte": np.array([0]),
               "exhaustion": np.array([0.0])}
    wt = RuleSet([cfg.car_t.rules], np)
    ko = RuleSet([apply_edits(cfg.car_t.rules, [cfg.edits[e] for e in cfg.car_t.product.edits])], np)
    np.testing.assert_allclose(wt.factor("kill", neutral), 0.5, rtol=1e-9)
    np.testing.assert_allclose(ko.factor("kill", neutral), 1.0, rtol=1e-9)
    assert "adenosine" not in ko.modulators("divide") and "monocyte_contact" not in ko.modulators("exhaust")
    assert "hypoxia" in ko.modulators("kill")  # not named by these edits
    assert cfg.tumor.rules["secrete_adenosine"]["hypoxia"].enabled  # tumor rules untouched


def test_products_factor_as_their_own_rules_and_alike_modulators_as_one_product():
    """With a wild-type and an A2AR-knockout product, each cell's factor is its product's
    own rule set's; modulators every product has alike are evaluated as for one product,
    bit for bit (two unedited products are one product)."""
    cfg = validate_config({"car_t": {"product": {"edits": ["a2ar_ko"]}}})
    rng = np.random.default_rng(3)
    k = 500
    signals = {"adenosine": rng.random(k) * 40, "protons": rng.random(k) * 0.3, "oxygen": rng.random(k) * 40,
               "contact:monocyte": rng.integers(0, 3, k), "contact:granulocyte": rng.integers(0, 3, k),
               "exhaustion": rng.random(k)}
    product = rng.integers(0, 2, k)
    wt_rules = cfg.car_t.rules
    ko_rules = apply_edits(wt_rules, [cfg.edits["a2ar_ko"]])
    both = RuleSet([wt_rules, ko_rules], np)
    for behaviour in ("kill", "divide", "exhaust"):
        mixed = both.factor(behaviour, signals, product)
        for p, rules in enumerate((wt_rules, ko_rules)):
            own = RuleSet([rules], np).factor(behaviour, signals)
            np.testing.assert_allclose(mixed[product == p], own[product == p], rtol=1e-13)
        np.testing.assert_array_equal(RuleSet([wt_rules, wt_rules], np).factor(behaviour, signals, product),
                                      RuleSet([wt_rules], np).factor(behaviour, signals))
    ko_cells = both.factor("kill", signals, product)[product == 1]
    assert not np.allclose(ko_cells, RuleSet([wt_rules], np).factor("kill", signals)[product == 1])  # the edit acts

def test_exhausted_car_t_do_not_kill():
    for exhaustion, expect_kills in ((1.0, False), (0.9, True)):
        kills, n = kills_after_one_engagement(car_t={"product": {"initial_exhaustion": exhaustion}})
        assert (kills > 0) == expect_kills, (exhaustion, kills)


def test_exhaustion_accumulates_with_engagements_until_killing_stops():
    m, n = pairs_model(antigen=1.0, car_t={"kill_probability": 0.0, "exhaustion_per_engagement": 0.25,
                                           "exhaustion_recovery_per_min": 0.0,
                                           "rules": {"exhaust": {k: OFF for k in ("adenosine", "hypoxia",
                                                                                 "monocyte_contact",
                                                                                 "granulocyte_contact")}}})
    for _ in range(20):
        m.step()
    ex = m.car_t.data["exhaustion"]
    np.testing.assert_allclose(ex, 1.0)  # four engagements of 0.25 each
    assert int(m.car_t.engaged.sum()) == 0


# ---- movement and recruitment -------------------------------------------------------------

def test_chemotaxis_drifts_up_a_fixed_gradient_at_the_expected_speed():
    speed, bias, ticks = 4.5, 1.5, 15
    shifts = []
    for seed in SEEDS:
        m = TMEModel(scenario(shape=(100, 100), seed=seed,
                              car_t={"move": {"speed_um_per_min": speed, "chemotaxis_bias": bias}}), backend=BE)
        xx = np.broadcast_to(np.arange(100, dtype=float), (100, 100))
        m.fields.values[m.fields.index["cxcl10"]] = 0.01 * xx  # rises along x
        ys, xs = grid_sites(m.lattice.shape, 5, offset=(5, 15))
        keep = xs < 50
        ys, xs = ys[keep], xs[keep]
        sites = np.ravel_multi_index((ys, xs), m.lattice.shape)
        m.car_t.add(sites, **m.car_t.new_cell_state(sites))
        start = m.lattice.coords(m.backend.to_host(m.car_t.site))
        for _ in range(ticks):
            m.step()
        shifts.append(m.lattice.coords(m.backend.to_host(m.car_t.site)) - start)
    shift = np.concatenate(shifts)
    offsets = m.lattice.offsets.astype(float)
    length = np.linalg.norm(offsets, axis=1)
    w = np.exp(bias * offsets[:, 1] / length)
    moves_per_tick = speed * 6.0 / (20.0 * length.mean())
    expect_x = ticks * moves_per_tick * (w * offsets[:, 1]).sum() / w.sum()
    se = shift[:, 1].std() / np.sqrt(len(shift))
    assert abs(shift[:, 1].mean() - expect_x) < 4 * se + 0.02 * expect_x, (shift[:, 1].mean(), expect_x)
    assert abs(shift[:, 0].mean()) < 4 * shift[:, 0].std() / np.sqrt(len(shift))


@pytest.mark.parametrize("dims", [2, 3])
def test_the_compiled_walk_makes_the_moves_of_its_array_twin(dims, monkeypatch):
    """The compiled walk (engine/fused_walk.py) and the array code move every cell to the
    same site, tick after tick, with CAR T (chemotaxis up cxcl10), monocytes and
    granulocytes (five sub-moves per tick) crowding each other, in 2D and 3D."""
    shape = (40, 40) if dims == 2 else (14, 14, 14)
    cfg = validate_config({
        "seed": 4, "lattice": {"dims": dims, "shape": list(shape), "vessels": {"layout": "random", "density": 0.02}},
        "time": {"duration_days": 1}, "tumor": {"archetype": "solid", "radius_sites": 5},
        "car_t": {"initial_cells": 300, "arrival_per_vessel_per_min": 0.002},
        "monocyte": {"initial_cells": 100}, "granulocyte": {"initial_cells": 100}})
    sites = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(moves, "walk_cells", None)
        m = TMEModel(cfg, backend=BE)
        for _ in range(40):
            m.step()
        sites.append([m.backend.to_host(p.site).copy() for p in m.populations])
    moved = sum(len(s) for s in sites[0])
    assert moved > 400
    for a, b in zip(*sites):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ccl2", [0.0, 10.0])
def test_monocyte_recruitment_rises_with_chemokine(ccl2):
    arrived = trials = 0
    for seed in SEEDS:
        m = TMEModel(scenario(fields={"ccl2": fixed(ccl2)}, seed=seed,
                              vessels={"layout": "grid", "grid_spacing_sites": 6},
                              monocyte={"recruit_per_vessel_per_min": 0.01}), backend=BE)
        m.step()
        arrived += m.monocytes.events["arrived"]
        trials += len(m.lattice.vessel_sites)
    factor = 1 + 9.0 * hill(ccl2, 1.0, 1)
    assert within(arrived, trials, 1 - np.exp(-0.01 * factor * 6)), arrived / trials


def test_activated_monocytes_return_to_rest_at_the_configured_rate():
    """Activation is reversible: with no stimulus (no cytokine, no CAR T, base activation
    off) an activated monocyte returns to rest with probability 1 - exp(-k dt) per tick."""
    k = 0.02
    rested = trials = 0
    for seed in SEEDS:
        m = TMEModel(scenario(monocyte={"activate_per_min": 0.0, "deactivate_per_min": k,
                                        "death_per_min": 0.0, "move": {"speed_um_per_min": 0.0}},
                              seed=seed), backend=BE)
        ys, xs = grid_sites(m.lattice.shape, 3)
        m.monocytes.add(np.ravel_multi_index((ys, xs), m.lattice.shape), activated=np.ones(len(ys), dtype=np.int8))
        m.step()
        at_rest = m.monocytes.data["activated"] == 0
        rested += int(at_rest.sum())
        trials += len(ys)
        m.step()  # without a stimulus nobody activates again
        assert (m.monocytes.data["activated"][at_rest] == 0).all()
    assert within(rested, trials, 1 - np.exp(-k * 6)), rested / trials
