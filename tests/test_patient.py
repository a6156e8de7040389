"""The patient: each mechanism of the systemic compartment in isolation against its
closed form (kinetic phases, expansion by encounters, homeostatic expansion, the
antigen sink, the blood compartment, CRS with and without CAR T, its grading and
treatment), arrivals on the lattice, therapy events at their time, outcome classes at
every boundary, bad timelines."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from helpers import fixed
from scipy.integrate import solve_ivp

from tme_abm.biology.coupling import Lesion
from tme_abm.biology.outcomes import OUTCOME_KEYS, classify_response
from tme_abm.biology.patient import BLOOD, MEMORY, Pulse, Systemic
from tme_abm.biology.therapy import lq_survival, oxygen_dose_factor
from tme_abm.config import ConfigError, validate_config
from tme_abm.config.schema import PatientConfig
from tme_abm.engine.backend import make_backend
from tme_abm.model import TMEModel

BE = make_backend("numpy", "float64")


QUIET = dict(distribution_out_per_min=0.0, distribution_in_per_min=0.0, expansion_per_min=0.0,
             homeostatic_per_min=0.0, contraction_per_min=0.0, memory_per_min=0.0, memory_decay_per_min=0.0,
             recall_per_min=0.0, blood_kills_per_min=0.0, normal_antigen_renewal_per_min=0.0,
             circulating_exchange_per_min=0.0, activation_per_min=0.0, deactivation_per_min=0.0,
             cytokine_clearance_per_min=0.0, variability={"expansion": 0.0, "cytokine": 0.0})
"""Every rate off: a test switches on the mechanism it checks."""


def patient(seed=0, **kw):
    """A patient with only the rates in ``kw`` on."""
    return Systemic.for_patient(PatientConfig(**{**QUIET, **kw}), seed)


NO_LESION = Lesion()


def run(s, ticks, lesion=NO_LESION, dt=6.0, t0=0.0):
    """Advance ``s`` by ``ticks`` ticks of ``dt`` minutes with fixed lattice inputs."""
    for i in range(ticks):
        s.advance(t0 + i * dt, dt, lesion)
    return s


def test_distribution_phase_moves_blood_cells_to_tissues_at_the_closed_form_rate():
    k_out, k_in = 2.0 / 1440, 0.5 / 1440
    s = patient(distribution_out_per_min=k_out, distribution_in_per_min=k_in)
    s.infuse(1e8, [], 0.0, 10)
    run(s, 100)
    t, k = 600.0, k_out + k_in
    assert s.cells[0][BLOOD] == pytest.approx(1e8 * (k_in + k_out * math.exp(-k * t)) / k, rel=1e-10)
    assert sum(s.cells[0]) == pytest.approx(1e8, rel=1e-12)  # exchange only: nothing made or lost


def test_contraction_and_memory_give_the_biphasic_decline():
    """Effectors die and become memory; memory decays slowly: blood = A e^-at + B e^-bt."""
    die, mem, k_m = 0.3 / 1440, 0.03 / 1440, math.log(2) / (90 * 1440)
    s = patient(contraction_per_min=die, memory_per_min=mem, memory_decay_per_min=k_m)
    s.infuse(1e8, [], 0.0, 10)
    run(s, 2400)  # 10 days
    t, a = 14400.0, die + mem
    eff = 1e8 * math.exp(-a * t)
    memory = 1e8 * mem * (math.exp(-k_m * t) - math.exp(-a * t)) / (a - k_m)
    assert s.cells[0][BLOOD] == pytest.approx(eff, rel=1e-9)
    assert s.cells[0][MEMORY] == pytest.approx(memory, rel=1e-9)
    assert s.blood_total == pytest.approx(eff + memory, rel=1e-9)


def test_expansion_in_blood_follows_the_encounters_up_to_the_replicative_capacity():
    """Effectors meeting antigen in blood grow at rho x fitness x encounter x (1 - n / N):
    each tick's growth adds its divisions to the mean generation n, so the pool is 2^n
    times its start and n approaches the product's divisions N geometrically."""
    rho = 2.0 / 1440
    s = patient(expansion_per_min=rho, normal_antigen_cells=1e12, encounter_half_ratio=1e-30)  # encounter 1
    s.infuse(1e6, [], 0.0, 8)
    s.products[0].fitness = 0.8
    run(s, 1)
    assert s.blood_encounter() == pytest.approx(1.0, abs=1e-12)
    assert s.cells[0][BLOOD] == pytest.approx(1e6 * math.exp(rho * 0.8 * 6), rel=1e-12)
    run(s, 2399, t0=6.0)  # 10 days
    c = rho * 0.8 * 6 / (8 * math.log(2))
    assert s.generations[0] == pytest.approx(8 * (1 - (1 - c) ** 2400), rel=1e-9)
    assert s.cells[0][BLOOD] == pytest.approx(1e6 * 2 ** s.generations[0], rel=1e-9)
    assert s.generations[0] > 0.9 * 8  # the capacity is nearly spent: expansion is ending
    # the ledger: every cell made is counted as born
    assert s.ledger["blood_born"] == pytest.approx(s.cells[0][BLOOD] - 1e6, rel=1e-9)


def test_the_disease_takes_and_returns_blood_effectors_of_each_product():
    """A lattice vessel site receives each product's blood effectors at their
    concentration x the extravasation volume x homing (memory cells do not enter); what
    enters leaves blood, what leaves the disease returns to it."""
    q = 1e-4
    s = patient(extravasation_ul_per_min=q, marrow_homing=3.0)
    s.infuse(1e8, [], 0.0, 10)
    s.infuse(2e8, ["a2ar_ko"], 0.0, 10)
    s.cells[0][MEMORY] = 5e8
    assert s.arrival_rate_per_vessel() == pytest.approx([1e8 / 5e6 * q * 3, 2e8 / 5e6 * q * 3])
    s.take(1, 5e7)
    s.give(0, 1e6)
    assert s.effectors() == pytest.approx([1e8 + 1e6, 1.5e8])
    assert s.ledger["entered"] == 5e7 and s.ledger["returned"] == 1e6
    with pytest.raises(ValueError, match="cannot leave"):
        s.take(0, 2e8)


def test_the_kinetics_ledger_counts_every_birth_and_death():
    """Every rate on: over a month, infused + born = alive + dead to rounding."""
    s = Systemic.for_patient(PatientConfig(normal_antigen_cells=5e9), 3)
    s.infuse(1e8, [], 0.0, 12)
    s.lymphodeplete(1.0, 0.0, 7 * 1440.0)
    run(s, 240 * 30)
    g = s.ledger
    assert g["blood_born"] > 1e8 and g["blood_died"] > 1e8
    assert g["infused"] + g["blood_born"] - g["blood_died"] == pytest.approx(s.car_t_total(), rel=1e-12)


def test_blood_encounter_is_a_saturating_function_of_antigen_per_effector():
    s = patient(normal_antigen_cells=1e9, encounter_half_ratio=2.0)
    s.infuse(1e8, [], 0.0, 10)
    for effectors in (1e7, 5e8, 1e10):
        s.cells[0] = [effectors, 0.0, 0.0]
        assert s.blood_encounter() == pytest.approx(1e9 / (1e9 + 2.0 * effectors))
    s.normal_antigen = 0.0
    assert s.blood_encounter() == 0.0


def test_homeostatic_expansion_after_lymphodepletion_in_closed_form():
    k_h, b, tau = 0.3 / 1440, 2.0, 7 * 1440.0
    s = patient(homeostatic_per_min=k_h, memory_per_min=1e-4)  # acts on effectors and memory alike
    s.infuse(1e6, [], 0.0, 10)
    s.lymphodeplete(b, 30.0, tau)  # mid-way through the sixth tick
    run(s, 400)
    grown = k_h * b * tau * (1 - math.exp(-(2400 - 30) / tau))
    assert sum(s.cells[0]) == pytest.approx(1e6 * math.exp(grown), rel=1e-9)


def test_antigen_sink_is_depleted_by_car_t_and_drives_their_expansion():
    """Normal antigen-positive cells: killed by engaged effectors (aplasia), they drive
    expansion while they last, and renew toward their normal number after CAR T are gone."""
    kw = dict(normal_antigen_cells=1e9, normal_antigen_renewal_per_min=1 / (30 * 1440.0),
              expansion_per_min=2.0 / 1440, blood_kills_per_min=2.0 / 1440)
    s = patient(**kw)
    s.infuse(1e7, [], 0.0, 100)
    # one tick against its closed form (inputs held at the tick start)
    a = s.blood_encounter()
    hazard = kw["blood_kills_per_min"] * a * 1e7 / 1e9
    r = kw["normal_antigen_renewal_per_min"]
    run(s, 1)
    s_inf = r * 1e9 / (r + hazard)
    assert s.normal_antigen == pytest.approx(s_inf + (1e9 - s_inf) * math.exp(-(r + hazard) * 6), rel=1e-12)
    assert s.cells[0][BLOOD] == pytest.approx(1e7 * math.exp(kw["expansion_per_min"] * a * 6), rel=1e-12)
    run(s, 240 * 14)
    # B-cell aplasia: with effectors in excess every sink cell is engaged, so the kill
    # hazard is kappa / K and renewal balances it at r S0 / (r + kappa / K)
    assert s.normal_antigen == pytest.approx(r * 1e9 / (r + kw["blood_kills_per_min"]), rel=0.02)
    peak = s.blood_total
    no_sink = run(patient(**{**kw, "normal_antigen_cells": 0.0}), 1)
    assert no_sink.blood_total == 0.0 and peak > 100 * 1e7
    s.cells[0] = [0.0] * 3  # CAR T gone: the sink renews
    run(s, 240 * 30)
    assert s.normal_antigen == pytest.approx(1e9 * (1 - math.exp(-1)), rel=0.02)


def test_circulating_tumor_follows_the_marrow_and_is_killed_by_car_t():
    kw = dict(circulating_tumor_fraction=0.05, circulating_exchange_per_min=1 / 1440.0)
    s = patient(**kw)
    s.start(1e9)
    assert s.circulating_tumor == pytest.approx(5e7) and s.burden == pytest.approx(1.05e9)
    run(s, 240, Lesion(burden=2e9))  # the marrow doubles: blood follows at its exchange rate
    assert s.circulating_tumor == pytest.approx(1e8 + (5e7 - 1e8) * math.exp(-1.0), rel=1e-9)
    killed = patient(**kw, blood_kills_per_min=5 / 1440.0)
    killed.start(1e9)
    killed.infuse(1e9, [], 0.0, 10)
    run(killed, 240, Lesion(burden=1e9))
    assert killed.circulating_tumor < 0.2 * 5e7


ACTIVE = Lesion(encounter=0.5, activated=1e9)
"""Half the disease's CAR T meet antigen: 1e9 activated CAR T there."""


def with_activated_car_t(s, n):
    """``s`` with a product and no cell outside the disease (every kinetic rate is off);
    the disease's ``n`` activated CAR T come with :data:`ACTIVE`."""
    s.infuse(0.0, [], 0.0, 10)
    return s


def test_activated_car_t_are_effectors_meeting_antigen_with_capacity_left():
    s = with_activated_car_t(patient(normal_antigen_cells=1e9), 1e9)
    s.cells[0][BLOOD] = 1e9  # meets the sink with A_b = 1/2
    assert s.activated_car_t(s.blood_encounter(), ACTIVE) == pytest.approx(1.5e9)
    s.generations[0] = 7.5  # a quarter of the product's 10 divisions left (in blood)
    assert s.activated_car_t(s.blood_encounter(), ACTIVE) == pytest.approx(0.25 * 0.5e9 + 1e9)


def test_no_car_t_no_crs_and_the_cytokine_follows_activation_in_closed_form():
    on, off, il6, k = 2.0 / 1440, 1.0 / 1440, 20.0, math.log(2) / 180
    kw = dict(activation_per_min=on, deactivation_per_min=off, il6_per_min=il6, cytokine_clearance_per_min=k,
              activation_half_car_t=1e9)
    s = run(patient(**kw), 480, Lesion(burden=1e10))  # a large tumor, no CAR T
    assert s.activation == 0.0 and s.cytokine == 0.0 and s.crs_grade() == 0
    s = with_activated_car_t(patient(**kw), 1e9)
    run(s, 1, ACTIVE)  # stimulus 1/2
    alpha = on * 0.5
    lam, a_inf = alpha + off, alpha / (alpha + off)
    assert s.activation == pytest.approx(a_inf * (1 - math.exp(-lam * 6)), rel=1e-12)
    # the cytokine against a fine numerical integration of dC/dt = il6 a(t) - k C
    ode = solve_ivp(lambda t, y: [il6 * a_inf * (1 - math.exp(-lam * t)) - k * y[0]], (0, 6.0), [0.0],
                    rtol=1e-12, atol=1e-14)
    assert s.cytokine == pytest.approx(ode.y[0, -1], rel=1e-8)
    run(s, 2000, Lesion(), t0=6.0)  # the stimulus ends: activation is reversible
    assert s.activation < 1e-3 and s.crs_grade() == 0


def test_killing_activates_myeloid_cells_without_engagement():
    s = patient(activation_per_min=1 / 1440, deactivation_per_min=1 / 1440, activation_half_kills_per_min=1e6)
    s.infuse(1e8, [], 0.0, 10)
    run(s, 240, Lesion(kills_per_min=1e6))
    # stimulus 1/2: a relaxes to on/2 / (on/2 + off) = 1/3 at rate 1.5/day
    assert s.activation == pytest.approx((1 - math.exp(-1.5)) / 3, rel=1e-9)


@pytest.mark.parametrize("c, grade", [(39.9, 0), (40.0, 1), (150.0, 2), (200.0, 2), (600.0, 3), (800.0, 3),
                                      (2000.0, 4), (1e5, 4)])
def test_astct_grade_from_fever_hypotension_and_hypoxia(c, grade):
    """Fever (>= 40) for grade 1; the worse of hypotension (150/600/2000) and hypoxia
    (200/800/2500) for grades 2-4."""
    s = patient()
    s.infuse(1.0, [], 0.0, 10)
    s.time_min = 1.0
    assert s.crs_grade(c) == grade


def test_after_crs_treatment_fever_is_not_needed_for_grading():
    """ASTCT: after tocilizumab or steroids mask fever, hypotension or hypoxia still grade."""
    s = patient(crs={"fever": 300.0, "hypotension": [150.0, 600.0, 2000.0]})
    s.infuse(1.0, [], 0.0, 10)
    s.time_min = 1.0
    assert s.crs_grade(200.0) == 0  # hypotension without fever: not CRS
    s.give_drug("corticosteroid", 0.5, 0.0, 1440.0)
    assert s.crs_grade(200.0) == 2 and s.crs_grade(100.0) == 0


def test_no_crs_is_graded_before_the_first_infusion():
    s = patient()
    s.cytokine = 500.0  # e.g. a wound pulse
    assert s.crs_grade() == 0
    s.infuse(1.0, [], 0.0, 10, minute=60.0)
    s.time_min = 66.0
    assert s.crs_grade() == 2  # hypotension needing fluids


def test_tocilizumab_blocks_signalling_and_steroids_suppress_production():
    kw = dict(activation_per_min=2 / 1440, deactivation_per_min=1 / 1440, il6_per_min=20.0,
              cytokine_clearance_per_min=math.log(2) / 180, activation_half_car_t=1e9)
    runs = {}
    for treat in (None, "tocilizumab", "corticosteroid"):
        s = with_activated_car_t(patient(**kw), 1e9)
        if treat == "tocilizumab":
            s.give_drug("tocilizumab", 0.9, 0.0, 5 * 1440 / math.log(2))
        elif treat == "corticosteroid":
            s.give_drug("corticosteroid", 0.8, 0.0, 1440 / math.log(2))
        runs[treat] = run(s, 240, ACTIVE)
    base, toci, ster = runs[None], runs["tocilizumab"], runs["corticosteroid"]
    assert toci.cytokine == base.cytokine  # the cytokine is still made ...
    assert toci.effective_cytokine() == pytest.approx(base.cytokine * (1 - 0.9 * math.exp(-math.log(2) / 5)))
    assert toci.crs_grade() < base.crs_grade()  # ... but signals less
    assert ster.activation < 0.6 * base.activation and ster.cytokine < 0.6 * base.cytokine
    # the first tick against its closed form: activation at (1 - 0.8) of its rate
    s = with_activated_car_t(patient(**kw), 1e9)
    s.give_drug("corticosteroid", 0.8, 0.0, 1440.0)
    run(s, 1, ACTIVE)
    on = 2 / 1440 * 0.2 * 0.5
    assert s.activation == pytest.approx(on / (on + 1 / 1440) * (1 - math.exp(-(on + 1 / 1440) * 6)), rel=1e-12)


def test_patients_vary_by_seed_with_the_configured_spread():
    cfg = PatientConfig(variability={"expansion": 0.3, "cytokine": 0.6})
    f = np.array([[s.expansion_factor, s.cytokine_factor]
                  for s in (Systemic.for_patient(cfg, seed) for seed in range(4000))])
    logs = np.log(f)
    assert abs(logs.mean(axis=0)).max() < 0.05 and logs.std(axis=0) == pytest.approx([0.3, 0.6], rel=0.05)
    assert Systemic.for_patient(cfg, 7).cytokine_factor == Systemic.for_patient(cfg, 7).cytokine_factor
    none = Systemic.for_patient(PatientConfig(variability={"expansion": 0.0, "cytokine": 0.0}), 7)
    assert none.expansion_factor == none.cytokine_factor == 1.0


@pytest.mark.parametrize("burden, expect", [
    (100.0, "SD"), (35.0, "PR"), (35.01, "SD"), (173.0, "PD"), (172.99, "SD"), (0.0, "CR"), (1.99, "CR"),
    (2.0, "PR"),
])
def test_response_classes_at_their_boundaries(burden, expect):
    """CR below the detection threshold (2 cells here); PR, SD, PD by the burden ratio."""
    assert classify_response(100.0, burden, 2.0) == expect


def small_patient(therapy, **over):
    data = {
        "seed": 3, "lattice": {"shape": [40, 40], "vessels": {"layout": "grid", "grid_spacing_sites": 5}},
        "time": {"tick_min": 6, "duration_days": 2, "field_substeps": 1},
        "tumor": {"archetype": "solid", "radius_sites": 8, "divide_per_min": 0.0, "apoptosis_per_min": 0.0},
        "car_t": {"move": {"speed_um_per_min": 0.0}, "death_per_min": 0.0, "divide_probability": 0.0},
        "patient": {**QUIET, "burden_scale": 1e6, "cytokine_clearance_per_min": math.log(2) / 180},
        "therapy": therapy,
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_config(data)


def test_lattice_arrivals_follow_the_blood_concentration_and_leave_blood():
    """Each lattice vessel site stands for s of the patient's, each receiving CAR T at the
    blood effector concentration x the extravasation volume: a Poisson number of cells of
    s times that mean arrives there as one agent (or joins an agent that arrived before
    it), and leaves blood; the agents hold about s cells each."""
    q, s = 2e-4, 1e3
    m = TMEModel(small_patient([{"kind": "infusion", "day": 0.0, "dose_cells": 1e8}],
                               patient={"burden_scale": s, "extravasation_ul_per_min": q},
                               tumor={"archetype": "dispersed", "initial_cells": 0}), backend=BE)  # room at vessels
    while m.day < 1e-9:
        m.step()
    n_vessels = len(m.lattice.vessel_sites)
    expected = arrived = 0.0
    for _ in range(100):
        rate = m.systemic.arrival_rate_per_vessel()
        assert rate == pytest.approx([0.0, m.systemic.effectors()[1] / 5e6 * q])  # product 1: the infused one
        expected += n_vessels * s * rate.sum() * m.dt_min
        blood, entered, returned = m.systemic.blood_total, m.systemic.ledger["entered"], m.systemic.ledger["returned"]
        m.step()
        came = m.systemic.ledger["entered"] - entered
        arrived += came
        assert m.systemic.blood_total == pytest.approx(blood - came + m.systemic.ledger["returned"] - returned,
                                                       rel=1e-12)
    assert abs(arrived - expected) < 4 * math.sqrt(expected) and expected > 1000
    assert m.car_t.weight.sum() + m.systemic.blood_total == pytest.approx(1e8, rel=1e-12)
    assert m.car_t.weight.mean() > 0.25 * s  # ~24 cells a tick at each vessel, pooled into agents of <= s
    assert m.event_log[0]["kind"] == "infusion" and m.event_log[0]["day"] == 0.0


@pytest.mark.slow
def test_events_fire_at_their_time_and_change_what_they_should():
    cfg = small_patient([{"kind": "resection", "day": -1.0, "fraction": 0.5, "order": "outside"},
                         {"kind": "infusion", "day": 0.0, "dose_cells": 1e7}],
                        time={"tick_min": 6, "duration_days": 3, "field_substeps": 1},
                        fields={"oxygen": fixed(38.0)})  # no necrosis: the counts below are the events' only
    m = TMEModel(cfg, backend=BE)
    assert cfg.start_day == -1.0 and m.day == -1.0
    n0 = len(m.tumor)
    m.step()  # the resection fires in the first tick
    assert len(m.tumor) == n0 - round(0.5 * n0)
    assert [e["kind"] for e in m.event_log] == ["resection"]
    coords = m.lattice.coords(m.backend.to_host(m.tumor.site))
    assert np.hypot(*(coords - 19.5).T).max() < 8 * 0.75  # the outer half went
    while m.day < -1e-9:
        m.step()
        assert len(m.event_log) == 1
    m.step()
    assert [e["kind"] for e in m.event_log] == ["resection", "infusion"]
    assert m.systemic.baseline_burden == m.burden()[0] == m.tumor.weight.sum()


def test_resection_of_a_region_removes_exactly_the_cells_inside_it():
    cfg = small_patient([{"kind": "resection", "day": -0.5, "region": {"center_sites": [19.5, 12], "radius_sites": 4},
                          "wound_cytokine": 30.0},
                         {"kind": "infusion", "day": 0.0, "dose_cells": 1e7}])
    m = TMEModel(cfg, backend=BE)
    coords = m.lattice.coords(m.backend.to_host(m.tumor.site))
    inside = ((coords - np.array([19.5, 12])) ** 2).sum(axis=1) <= 16
    m.step()
    assert m.event_log[0]["tumor_removed"] == inside.sum() > 0
    assert len(m.tumor) == len(coords) - inside.sum()
    after = m.lattice.coords(m.backend.to_host(m.tumor.site))
    assert (((after - np.array([19.5, 12])) ** 2).sum(axis=1) > 16).all()
    # the wound pulse, cleared over the rest of the tick (half-life 3 h)
    assert m.systemic.cytokine == pytest.approx(30.0 * math.exp(-math.log(2) / 180 * 6), rel=1e-9)


def test_radiotherapy_kills_the_lq_fraction_and_spares_hypoxic_cells():
    def killed(o2):
        cfg = small_patient([{"kind": "radiotherapy", "day": 0.0, "dose_gy": 4.0}],
                            tumor={"archetype": "dispersed", "initial_cells": 1200},
                            fields={"oxygen": fixed(o2)}, lattice={"shape": [60, 60], "vessels": {"layout": "none"}},
                            patient={"burden_scale": 1.0})  # one cell per agent: each dies or not
        m = TMEModel(cfg, backend=BE)
        m.step()
        return m.tumor.counts()["tumor_apoptotic"], len(m.tumor)

    for o2 in (38.0, 0.5):
        k, n = killed(o2)
        p = 1 - lq_survival(4.0 * oxygen_dose_factor(o2, 3.0, 3.0), 0.3, 0.03)
        assert abs(k / n - p) < 4 * math.sqrt(p * (1 - p) / n), (o2, k / n, p)
    assert killed(0.5)[0] < 0.7 * killed(38.0)[0]


def test_mrd_leaves_the_residual_cells_in_whole_agents_and_one_trimmed():
    m = TMEModel(small_patient([{"kind": "mrd", "day": -0.5, "residual_cells": 2.5e6},
                                {"kind": "infusion", "day": 0.0, "dose_cells": 1e7}]), backend=BE)
    n0 = len(m.tumor) * 1e6
    m.step()
    assert m.burden()[0] == 2.5e6 and sorted(m.tumor.weight.tolist()) == [5e5, 1e6, 1e6]
    assert m.event_log[0]["tumor_removed"] == n0 - 2.5e6 == m.systemic.ledger["tumor_removed"]


@pytest.mark.slow
def test_outcomes_are_reported_at_the_end():
    m = TMEModel(small_patient([{"kind": "infusion", "day": 0.0, "dose_cells": 3e8}],
                               patient={"assessment_day": 1.0}), backend=BE)
    while m.running:
        m.step()
    out = m.outcomes()
    assert tuple(out) == OUTCOME_KEYS  # the columns a sweep's outcome table declares
    assert out["response_at_assessment"] in ("CR", "PR", "SD", "PD")
    # no expansion: the pool peaks in the infusion tick and only falls (into the disease)
    assert 2.5e8 < out["peak_blood_car_t"] <= 3e8 and out["peak_blood_car_t_day"] <= 0.01
    assert out["baseline_burden"] > 0 and 0 <= out["icans_score"] < 1
    assert out["max_crs_grade"] in range(5)


@pytest.mark.parametrize("therapy, needle", [
    ([{"kind": "infusion", "day": 0, "dose_cells": -5}], "dose_cells: value -5"),
    ([{"kind": "radiotherapy", "day": -2, "dose_gy": 2}, {"kind": "radiotherapy", "day": -2, "dose_gy": 2}],
     "overlap"),
    ([{"kind": "infusion", "day": 30, "dose_cells": 5}], "after the end of the run"),
    ([{"kind": "chemo", "day": 0}], "does not match any of the expected tags"),
    ([{"kind": "infusion", "day": 0, "dose_cells": 5, "product": {"edits": ["nope"]}}], "unknown edit 'nope'"),
])
def test_bad_timelines_are_refused_with_a_clear_message(therapy, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_config({"therapy": therapy, "time": {"duration_days": 5}})


def test_lymphodepletion_removes_myeloid_cells_and_boosts_expansion():
    cfg = small_patient([{"kind": "lymphodepletion", "day": -1.0, "myeloid_kill_fraction": 0.6,
                          "expansion_boost": 2.0, "boost_days": 5.0},
                         {"kind": "infusion", "day": 0.0, "dose_cells": 1e7}],
                        monocyte={"initial_cells": 300}, granulocyte={"initial_cells": 300})
    m = TMEModel(cfg, backend=BE)
    n0 = len(m.monocytes) + len(m.granulocytes)
    m.step()
    removed = m.event_log[0]["myeloid_removed"]
    assert abs(removed / n0 - 0.6) < 4 * math.sqrt(0.24 / n0)
    assert m.systemic.boost == Pulse(2.0, 0.0, 5.0 * 1440)


def test_tocilizumab_and_corticosteroid_events_fire_at_their_time():
    cfg = small_patient([{"kind": "infusion", "day": 0.0, "dose_cells": 1e7},
                         {"kind": "tocilizumab", "day": 0.5, "effect": 0.7, "half_life_days": 4.0},
                         {"kind": "corticosteroid", "day": 0.75, "effect": 0.6}])
    m = TMEModel(cfg, backend=BE)
    while m.day < 0.5:
        m.step()
    assert not m.systemic.crs_treated and m.systemic.blockade.level == 0.0
    m.step()
    assert [e["kind"] for e in m.event_log] == ["infusion", "tocilizumab"] and m.systemic.crs_treated
    assert m.systemic.blockade == Pulse(0.7, 0.5 * 1440, 4.0 * 1440 / math.log(2))
    while m.day < 0.75 + 1e-9:
        m.step()
    assert m.event_log[-1]["kind"] == "corticosteroid" and m.systemic.suppression.level == 0.6
    assert m.systemic.suppression.tau_min == pytest.approx(1440 / math.log(2))  # the drug's default half-life
    assert validate_config({"therapy": [{"kind": "tocilizumab", "day": 0}]}).therapy[0].effect == 0.9


@pytest.mark.parametrize("patient, needle", [
    ({"crs": {"hypotension": [600, 150, 2000]}}, "hypotension [600.0, 150.0, 2000.0] must be 3 increasing values"),
    ({"crs": {"hypoxia": [200, 800]}}, "hypoxia [200.0, 800.0] must be 3 increasing values"),
    ({"variability": {"cytokine": -1}}, "variability.cytokine"),
    ({"lattice_share": 0.1}, "lattice_share"),
    ({"burden_scale": 0.5}, "patient.burden_scale: value 0.5"),
])
def test_bad_patient_settings_are_refused_with_the_key(patient, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate_config({"patient": patient})


@pytest.mark.parametrize("data, needle", [
    ({"tumor": {"archetype": "dispersed", "burden_cells": 1e12}, "patient": {"burden_scale": 1e5}},
     "tumor.burden_cells: 10000000 tumor agents exceed the"),
    ({"tumor": {"archetype": "solid", "burden_cells": 1e9}}, "tumor.burden_cells 1e+09: sets the sample of dispersed"),
    ({"tumor": {"antigen": {"negative_fraction": 1.5}}}, "tumor.antigen.negative_fraction"),
    ({"tumor": {"capacity_fold": 1}}, "tumor.capacity_fold 1: a disease at its carrying capacity"),
])
def test_a_sample_that_cannot_hold_the_patient_is_refused_with_the_key(data, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate_config(data)
