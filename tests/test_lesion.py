"""The lesion's mechanisms (issue 19), each in isolation: Gompertz growth and the marrow
niche against their closed forms, the burn-in's steady state, the perfusion term against
the Krogh cylinder, exhaustion's recovery with rest, bystander killing, antigen loss at
division, the resection's geometry and radiotherapy's added effects. No test asserts an
experiment's outcome."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import BE, OFF, SEEDS, grid_sites, pairs_model, scenario, within
from scipy import integrate

import tme_abm
from tme_abm.biology import therapy
from tme_abm.biology.growth import gompertz_birth_per_min, gompertz_cells, niche_step
from tme_abm.biology.perfusion import PER_MM2, krogh_exchange_per_min, krogh_mean, krogh_profile, max_density_per_mm2
from tme_abm.biology.populations.car_t import days_to_exhaustion
from tme_abm.config import ConfigError, load_config, validate_config
from tme_abm.io import run
from tme_abm.model import TMEModel, get_state, set_state
from tme_abm.studies.measures import calibration

BASELINE = "configs/baseline.yaml"

# ---- growth -------------------------------------------------------------------------------


def test_birth_rate_is_gompertz_with_loss_capped_at_the_low_density_rate():
    alpha, loss, r_max, k = 1e-4, 1e-5, 7.2e-4, 1000.0
    n = np.array([0.0, 1.0, 10.0, 500.0, 1000.0, 3000.0])
    expect = np.clip(loss + alpha * np.log(k / np.maximum(n, 1e-300)), 0, r_max)
    np.testing.assert_allclose(gompertz_birth_per_min(n, k, alpha, loss, r_max), expect)
    assert gompertz_birth_per_min(1000.0, k, alpha, loss, r_max) == pytest.approx(loss)  # steady state at K
    assert gompertz_birth_per_min(0.0, k, alpha, loss, r_max) == r_max


@pytest.mark.slow
def test_lone_cells_grow_as_the_gompertz_closed_form():
    """Sparse cells in full oxygen, with apoptosis as the only loss: the mean count over
    seeds follows exponential growth at r_max - delta, then Gompertzian deceleration."""
    alpha, loss, r_max, k, n0 = 2e-3, 2e-4, 4e-3, 400, 40
    tumor = {"divide_per_min": r_max, "apoptosis_per_min": loss, "gompertz_per_min": alpha,
             "carrying_capacity_cells": k, "clearance_min": 6.0, "necrosis_per_min": 0.0}
    checks = [60, 240, 600, 1200]
    counts = np.zeros((len(SEEDS), len(checks)))
    for i, seed in enumerate(SEEDS):
        m = TMEModel(scenario(shape=(100, 100), tumor=tumor, seed=seed), backend=BE)
        ys, xs = grid_sites(m.lattice.shape, 12)
        sites = np.ravel_multi_index((ys, xs), m.lattice.shape)[:n0]
        m.tumor.add(sites, antigen=np.ones(n0))
        for j, tick in enumerate(checks):
            while m.steps < tick:
                m.step()
            counts[i, j] = m.burden()[0]  # cells: a division without room stays in its parent
    expect = gompertz_cells(np.array(checks) * 6.0, n0, k, alpha, loss, r_max)
    np.testing.assert_allclose(counts.mean(axis=0), expect, rtol=0.06)
    assert expect[-1] > 0.9 * k and expect[0] < 0.5 * k  # the checks span both phases


def test_normal_marrow_cells_share_the_capacity():
    """Alone, normal cells follow the niche's Gompertz law; with the niche full of tumor
    they neither grow nor let the tumor grow beyond its loss."""
    alpha, loss, r_max, k, dt = 1e-4, 1e-5, 7.2e-4, 5000.0, 6.0
    n = 500.0
    for _ in range(2000):
        n = niche_step(n, 0.0, k, alpha, loss, r_max, dt)
    assert n == pytest.approx(float(gompertz_cells(2000 * dt, 500.0, k, alpha, loss, r_max)), rel=2e-3)
    assert niche_step(3000.0, 2000.0, k, alpha, loss, r_max, dt) == pytest.approx(3000.0)
    cfg = scenario(tumor={"archetype": "dispersed", "initial_cells": 300, "marrow_normal_cells": 700,
                          "divide_per_min": r_max, "apoptosis_per_min": loss, "gompertz_per_min": alpha,
                          "capacity_fold": 1})
    m = TMEModel(cfg, backend=BE)
    assert m.capacity[0] == 1000
    assert float(m.tumor.birth_per_min(m.tumor.alive)[0]) == pytest.approx(loss)
    m.replicas[0].marrow_normal = 200.0  # normal cells lost: the tumor's birth rate rises
    assert float(m.tumor.birth_per_min(m.tumor.alive)[0]) == pytest.approx(loss + alpha * math.log(1000 / 500))


@pytest.mark.slow
def test_the_burn_in_brings_a_lesion_to_its_steady_state():
    """A small baseline lesion at its carrying capacity, no therapy: over the last day of a
    7-day burn-in the alive count and the necrotic fraction change by no more than their
    noise, and the lesion keeps most of its cells."""
    cfg = load_config(BASELINE, ["backend=numpy", "lattice.shape=[50, 50]", "tumor.radius_sites=12",
                                 "therapy=[]", "time.duration_days=7", "monocyte.initial_cells=10",
                                 "granulocyte.initial_cells=10", "tumor.capacity_fold=1",
                                 f"tumor.gompertz_per_min={0.1 / 1440}"])
    m = TMEModel(cfg, backend=BE)
    n0 = m.current_row()["tumor_alive"]
    alive, necrotic = [], []
    while m.running:
        m.step()
        r = m.current_row()
        alive.append(r["tumor_alive"])
        necrotic.append(r["tumor_necrotic"] / max(r["tumor_alive"] + r["tumor_necrotic"], 1))
    per_day = int(1440 / cfg.time.tick_min)
    last, before = np.array(alive[-per_day:]), np.array(alive[-2 * per_day:-per_day])
    noise = 4 * np.sqrt(last.mean())  # Poisson-scale births and deaths of one day
    assert abs(last.mean() - before.mean()) < max(noise, 0.02 * last.mean()), (before.mean(), last.mean())
    assert abs(np.mean(necrotic[-per_day:]) - np.mean(necrotic[-2 * per_day:-per_day])) < 0.02
    assert last.mean() > 0.8 * n0


# ---- perfusion ----------------------------------------------------------------------------


def test_krogh_mean_is_the_area_mean_of_the_krogh_profile():
    rc, big_r, d, k, cv = 5.0, 150.0, 1e5, 10.0, 46.0
    area, _ = integrate.quad(lambda r: krogh_profile(r, rc, big_r, d, k, cv) * 2 * math.pi * r, rc, big_r)
    assert krogh_mean(rc, big_r, d, k, cv) == pytest.approx(area / (math.pi * (big_r**2 - rc**2)), rel=1e-8)
    eps = 1e-4  # no flux at R, the vessel value at r_c
    assert krogh_profile(rc, rc, big_r, d, k, cv) == pytest.approx(cv)
    slope = (krogh_profile(big_r, rc, big_r, d, k, cv) - krogh_profile(big_r - eps, rc, big_r, d, k, cv)) / eps
    assert abs(slope) < 1e-6


@pytest.mark.parametrize("per_mm2, uptake, rtol", [(300, 10.0, 0.005), (50, 10.0, 0.01), (6, 10.0, 0.1),
                                                    (6, 0.1, 0.001)])
def test_the_perfusion_steady_state_matches_the_krogh_cylinder(per_mm2, uptake, rtol):
    """Tissue consuming at ``uptake`` with microvessels at ``per_mm2``: the perfusion term's
    steady state, solved on the lattice (uniform consumers, no vessel sites, no-flux
    faces), equals kappa c_v/(kappa + k + decay), and that equals the mean of the
    analytic Krogh cylinder (Bessel functions) to ``rtol``."""
    d, cv, decay = 1e5, 46.0, 0.1
    cfg = scenario(shape=(20, 20), fields={"oxygen": {"initial": cv, "vessel_value": cv, "perfused": True,
                                                      "diffusion_um2_per_min": d, "decay_per_min": decay,
                                                      "uptake_per_min": {"tumor": uptake}, "scheme": "steady"}},
                   lattice={"perfusion": {"normal_per_mm2": per_mm2}},
                   tumor={"archetype": "dispersed", "initial_cells": 400})
    m = TMEModel(cfg, backend=BE)
    m.collect_sources()
    m.fields.step(m.sources, 1)
    ox = m.fields.field("oxygen")
    kappa = float(krogh_exchange_per_min(d, per_mm2 * PER_MM2, 5.0))
    np.testing.assert_allclose(ox, kappa * cv / (kappa + uptake + decay), rtol=1e-3)
    radius = 1 / math.sqrt(math.pi * per_mm2 * PER_MM2)
    assert float(ox.mean()) == pytest.approx(krogh_mean(5.0, radius, d, uptake + decay, cv), rel=rtol)


def test_oxygenation_rises_with_vessel_density():
    medians = []
    for per_mm2 in (3.0, 12.0, 48.0):
        cfg = load_config(BASELINE, ["backend=numpy", f"lattice.perfusion.tumor_per_mm2={per_mm2}",
                                     "therapy=[]"])
        m = TMEModel(cfg, backend=BE)
        m.step()  # oxygen is solved for its steady state in every tick
        medians.append(m.current_row()["tumor_po2_median"])
    assert medians[0] < medians[1] < medians[2], medians


def test_perfusion_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="perfused: true needs a vessel_value"):
        validate_config({"fields": {"cxcl10": {"perfused": True}}})
    with pytest.raises(ValueError, match="normal_per_mm2 5000: at most"):
        validate_config({"lattice": {"perfusion": {"normal_per_mm2": 5000}}})
    with pytest.raises(ConfigError, match="tumor_per_mm2"):
        load_config(BASELINE, ["lattice.perfusion.tumor_per_mm2=-1"])


# ---- CAR T: exhaustion with rest, bystander killing ---------------------------------------


def test_exhaustion_recovers_with_rest_down_to_its_permanent_part():
    rate = math.log(2) / 600.0
    m, n = pairs_model(antigen=0.0, car_t={"exhaustion_recovery_per_min": rate})
    m.car_t.data["exhaustion"][:] = 0.9
    m.car_t.data["exhaustion_fixed"][:] = 0.3
    for _ in range(100):
        m.step()
    expect = 0.3 + 0.6 * math.exp(-rate * 600.0)
    np.testing.assert_allclose(m.car_t.data["exhaustion"], expect, rtol=1e-12)


def test_exhausted_cells_regain_function_once_rest_brings_exhaustion_below_the_threshold():
    """Exhaustion 1 (0.3 of it permanent) at a half-life of 10 ticks: it falls below 0.5
    after 10 log2(3.5) = 18.07 ticks, so the cells are exhausted for 18 ticks of rest and
    engage their antigen-positive neighbours from the 19th."""
    m, n = pairs_model(car_t={"exhaustion_recovery_per_min": math.log(2) / 60.0, "exhaustion_recovered": 0.5,
                              "kill_probability": 0.0})
    d = m.car_t.data
    d["exhaustion"][:], d["exhaustion_fixed"][:], d["exhausted"][:] = 1.0, 0.3, 1
    for tick in range(1, 20):
        m.step()
        assert m.car_t.exhausted.all() == (tick < 19) and (m.car_t.engaged.any() == (tick >= 19)), tick


def test_each_engagement_adds_exhaustion_of_which_a_share_is_permanent_and_engaged_cells_do_not_rest():
    m, n = pairs_model(car_t={"kill_probability": 0.0, "exhaustion_per_engagement": 0.2,
                              "exhaustion_irreversible": 0.25, "exhaustion_recovery_per_min": 1e-3,
                              "engagement_min": 12.0,
                              "rules": {"exhaust": {k: OFF for k in ("adenosine", "hypoxia", "monocyte_contact",
                                                                    "granulocyte_contact")}}})
    m.step()  # engage (lasting two ticks)
    assert int(m.car_t.engaged.sum()) == n
    m.step()  # engaged: no rest
    np.testing.assert_array_equal(m.car_t.data["exhaustion"], 0.0)
    m.step()  # the engagement ends: +0.2, 0.05 of it permanent; then one tick of rest
    keep = math.exp(-1e-3 * 6.0)
    np.testing.assert_allclose(m.car_t.data["exhaustion_fixed"], 0.05)
    np.testing.assert_allclose(m.car_t.data["exhaustion"], 0.05 + 0.15 * keep)


def test_days_to_exhaustion_follows_the_engagement_and_rest_rules():
    """The calibration's time to exhaustion: without rest it is ceil(1/increment)
    engagements; with rest, a cell that re-engages at once after each engagement (one tick
    of rest between them) exhausts after as many engagements as the function counts."""
    assert days_to_exhaustion(8.0, 0.1, 0.3, 0.0, 40.0) == pytest.approx((9 * 180 + 40) / 1440)
    assert days_to_exhaustion(8.0, 0.1, 0.0, 1.0, 40.0) == math.inf  # all of it recovers between engagements
    rate = math.log(2) / 6.0  # one 6-min tick of rest halves the reversible part
    counted = days_to_exhaustion(1440 / 18, 0.1, 0.5, rate, 12.0)
    engagements = round((counted * 1440 - 12.0) / 18) + 1
    m, n = pairs_model(car_t={"kill_probability": 0.0, "exhaustion_per_engagement": 0.1, "engagement_min": 12.0,
                              "exhaustion_irreversible": 0.5, "exhaustion_recovery_per_min": rate,
                              "rules": {"exhaust": {k: OFF for k in ("adenosine", "hypoxia", "monocyte_contact",
                                                                    "granulocyte_contact")}}})
    started, until = 0, np.full(n, np.nan)
    while not m.car_t.exhausted.all():
        m.step()
        now = m.car_t.data["engaged_until"]
        started += int((~np.isnan(now) & (now != until)).sum())  # a new engagement ends at a new time
        until = now.copy()
    assert started == n * engagements and 10 < engagements < 30
    for _ in range(10):  # the permanent part (0.5 x 0.1 per engagement) is past 0.5: no recovery
        m.step()
    assert m.car_t.exhausted.all() and not m.car_t.engaged.any()


def bystander_trial(seed, kill_probability=1.0, neighbour_antigen=0.0, susceptibility=1.0, p=0.3):
    """Pairs as in test_rules, with a second tumor cell on the far side of each target."""
    m, n = pairs_model(seed, car_t={"kill_probability": kill_probability, "bystander_kill_probability": p})
    ys, xs = grid_sites(m.lattice.shape, 4)
    sites = np.ravel_multi_index((ys, xs - 1), m.lattice.shape)
    m.tumor.add(sites, antigen=np.full(n, neighbour_antigen), bystander=np.full(n, susceptibility))
    m.step()  # engage the targets (the pairs' CAR T are next to the targets only)
    m.step()  # the engagements end
    t = m.tumor
    neighbour = np.isin(t.data["site"], sites)
    return int((t.data["state"][neighbour] == 3).sum()), n


@pytest.mark.parametrize("susceptibility", [1.0, 3.0])
def test_a_kill_takes_antigen_negative_neighbours_with_the_bystander_probability(susceptibility):
    dead = trials = 0
    for seed in SEEDS:
        d, n = bystander_trial(seed, susceptibility=susceptibility)
        dead, trials = dead + d, trials + n
    assert within(dead, trials, min(0.3 * susceptibility, 1.0)), dead / trials


def test_no_bystander_death_without_a_kill_nor_of_antigen_positive_neighbours():
    assert bystander_trial(0, kill_probability=0.0)[0] == 0
    assert bystander_trial(0, neighbour_antigen=1.0)[0] == 0


def test_daughters_lose_the_antigen_at_the_configured_rate():
    lost = born = 0
    for seed in SEEDS:
        m = TMEModel(scenario(tumor={"divide_per_min": 0.05, "antigen": {"loss_per_division": 0.2,
                                                                         "inheritance_sd": 0.0}}, seed=seed),
                     backend=BE)
        ys, xs = grid_sites(m.lattice.shape, 3)
        m.tumor.add(np.ravel_multi_index((ys, xs), m.lattice.shape), antigen=np.ones(len(ys)))
        m.step()
        new = m.tumor.data["id"] >= len(ys)
        lost += int((m.tumor.data["antigen"][new] == 0).sum())
        born += int(new.sum())
    assert born > 200 and within(lost, born, 0.2), lost / born


# ---- debulking ----------------------------------------------------------------------------


def lesion_model(*events, shape=(40, 40), radius=10):
    cfg = load_config(BASELINE, ["backend=numpy", f"lattice.shape={list(shape)}", f"tumor.radius_sites={radius}",
                                 "time.burn_in_days=0", "monocyte.initial_cells=60", "granulocyte.initial_cells=60",
                                 f"therapy={list(events)}"])
    return TMEModel(cfg, backend=BE)


@pytest.mark.parametrize("order", ["inside", "outside"])
def test_resection_takes_the_mass_and_leaves_the_margin_by_default(order):
    m = lesion_model({"kind": "resection", "day": 0, "fraction": 0.7, "order": order},
                     {"kind": "infusion", "day": 1, "dose_cells": 1e8})
    coords = m.lattice.coords(m.tumor.data["site"]).astype(float)
    centre = coords.mean(axis=0)
    before = dict(zip(m.tumor.data["id"].tolist(), ((coords - centre) ** 2).sum(axis=1)))
    while m.time_min < 6.0:
        m.step()
    kept = {int(i) for i in m.tumor.data["id"]}
    d_kept = [d for i, d in before.items() if i in kept]
    d_gone = [d for i, d in before.items() if i not in kept]
    assert len(d_gone) == round(0.7 * len(before))
    if order == "inside":  # the residual cells are the margin
        assert max(d_gone) <= min(d_kept)
    else:
        assert min(d_gone) >= max(d_kept)
    assert validate_config({"therapy": [{"kind": "resection", "day": 0}]}).therapy[0].order == "inside"


def test_radiotherapy_normalises_vessels_depletes_myeloid_cells_and_sensitises_survivors():
    rt = {"kind": "radiotherapy", "day": 0, "dose_gy": 2.0, "perfusion_gain": 1.5, "myeloid_kill_fraction": 0.4,
          "bystander_sensitization": 3.0, "chemokine_pulse": 0.5}
    m = lesion_model(rt, {"kind": "infusion", "day": 1, "dose_cells": 1e8})
    sites = set(m.tumor.data["site"].tolist())
    before = m.fields.microvessels.copy()
    cxcl10 = m.fields.field("cxcl10").copy().reshape(-1)
    myeloid = len(m.monocytes) + len(m.granulocytes)
    m.event_log.extend(therapy.apply(m, m.timeline[0]))  # the fraction alone, before any field solve
    after = m.fields.microvessels[0]
    lesion = np.array(sorted(sites))
    other = np.setdiff1d(np.arange(m.lattice.n_grid), lesion)
    np.testing.assert_allclose(after[lesion], 1.5 * before[0, lesion])
    np.testing.assert_array_equal(after[other], before[0, other])
    m.fields.scale_microvessels(lesion, 1e6)  # repeated normalisation stops where the Krogh term ends
    top = max_density_per_mm2(5.0) * PER_MM2
    np.testing.assert_allclose(m.fields.microvessels[0, lesion], top)
    assert np.isfinite(m.fields._exchange).all() and (m.fields._exchange >= 0).all()
    killed = m.event_log[0]["myeloid_killed"]
    assert within(killed, myeloid, 0.4), killed / myeloid
    t = m.tumor
    alive = t.data["state"] == 0
    assert m.event_log[0]["tumor_killed"] > 0
    np.testing.assert_array_equal(t.data["bystander"][alive], 3.0)
    np.testing.assert_array_equal(t.data["bystander"][t.data["state"] == 2], 1.0)  # the cells it killed
    pulse = m.fields.field("cxcl10").reshape(-1) - cxcl10
    np.testing.assert_allclose(pulse[t.data["site"][alive]], 0.5, rtol=1e-6)
    assert not pulse[t.data["site"][~alive]].any()


def test_the_microvessels_and_the_marrow_niche_survive_a_checkpoint():
    rt = {"kind": "radiotherapy", "day": 0, "dose_gy": 2.0, "perfusion_gain": 2.0}
    a = lesion_model(rt, {"kind": "infusion", "day": 1, "dose_cells": 1e8})
    for _ in range(3):
        a.step()
    a.replicas[0].marrow_normal = 123.5
    b = lesion_model(rt, {"kind": "infusion", "day": 1, "dose_cells": 1e8})
    set_state(b, [get_state(a)])
    np.testing.assert_array_equal(b.fields.microvessels, a.fields.microvessels)
    assert b.replicas[0].marrow_normal == 123.5
    for _ in range(5):
        a.step()
        b.step()
    np.testing.assert_equal(a.current_row(), b.current_row())


@pytest.mark.slow
def test_the_lesion_calibration_reads_the_first_event_row(tmp_path):
    cfg = load_config(BASELINE, ["backend=numpy", "lattice.shape=[40, 40]", "tumor.radius_sites=10",
                                 "time.burn_in_days=0.5", "time.duration_days=3.2", "monocyte.initial_cells=5",
                                 "granulocyte.initial_cells=5"])
    run(cfg, tmp_path / "c.h5", quiet=True)
    r = tme_abm.open_run(tmp_path / "c.h5")
    cal, ts = calibration(r), r.timeseries
    first = ts[ts["day"] <= -3.0 + 1e-9].iloc[-1]  # the lymphodepletion on day -3 ends the burn-in
    assert first["day"] == pytest.approx(-3.0) and ts["day"].iloc[0] == pytest.approx(-3.5)
    for k in ("tumor_po2_median", "normal_po2_median", "tumor_adenosine_median", "tumor_ph_median"):
        assert cal[k] == first[k]
    assert cal["lesion_kept"] == first["tumor_alive"] / ts["tumor_alive"].iloc[0]
    t = cfg.tumor
    assert cal["doubling_days_at_tenth_capacity"] == pytest.approx(t.doubling_days)  # a tenth of K at the start
    assert cal["tumor_po2_median"] < cal["normal_po2_median"]  # the lesion consumes oxygen

