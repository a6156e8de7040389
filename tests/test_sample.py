"""The patient and its sample (docs/model.md, "The patient and its sample"): the ledger
of every cell between the lattice and the patient with every therapy event active, in a
single run and a batch; super-individuals whose members die one by one; a CAR T agent
meeting at most its weight of a target's cells; rare cells counted at the patient's
scale; a disease that grows with its doubling time; the three response depths; and a
sampled patient against the same patient simulated whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import BE, fixed, pairs_model, scenario
from scipy import stats

from tme_abm.biology import coupling
from tme_abm.biology.growth import gompertz_cells, gompertz_rate_per_min
from tme_abm.biology.outcomes import History, compute_outcomes
from tme_abm.config import validate_config
from tme_abm.config.schema import PatientConfig
from tme_abm.model import TMEModel
from tme_abm.model.model import rare_cells

EVERY_EVENT = [
    {"kind": "radiotherapy", "day": -2.0, "dose_gy": 4.0},
    {"kind": "resection", "day": -1.5, "fraction": 0.2, "order": "outside"},
    {"kind": "lymphodepletion", "day": -1.0},
    {"kind": "infusion", "day": 0.0, "dose_cells": 2e8},
    {"kind": "infusion", "day": 0.5, "dose_cells": 1e8, "product": {"edits": ["a2ar_ko"]}},
    {"kind": "tocilizumab", "day": 1.0},
    {"kind": "corticosteroid", "day": 1.5},
    {"kind": "mrd", "day": 2.0, "residual_cells": 5e7},
]


def ledger_config(**over):
    data = {"seed": 5, "backend": "numpy", "dtype": "float64",
            "lattice": {"shape": [40, 40], "vessels": {"layout": "grid", "grid_spacing_sites": 5}},
            "time": {"tick_min": 12, "duration_days": 5.5},
            "tumor": {"archetype": "bulky", "radius_sites": 9, "initial_cells": 150},
            "car_t": {"initial_cells": 5, "arrival_per_vessel_per_min": 2e-4, "divide_probability": 0.9},
            "monocyte": {"initial_cells": 20}, "granulocyte": {"initial_cells": 20},
            "patient": {"burden_scale": 1e5, "normal_antigen_cells": 1e9, "circulating_tumor_fraction": 0.05,
                        "marrow_homing": 3.0, "extravasation_ul_per_min": 1e-4},  # a disease that takes many
            "therapy": EVERY_EVENT}
    data.update(over)
    return validate_config(data)


def balances(m: TMEModel) -> list[tuple[float, float]]:
    """Per replicate: (CAR T, tumor) left unexplained by the ledger, relative to the cells counted."""
    car_t, tumor = coupling.lattice_car_t(m), coupling.burden(m)
    out = []
    for r, rep in enumerate(m.replicas):
        s = rep.systemic
        made = s.ledger["infused"] + s.ledger["placed"] + s.ledger["blood_born"] + s.ledger["lattice_born"]
        out.append((coupling.car_t_balance(s, car_t[r]) / max(made, 1.0),
                    coupling.tumor_balance(s, tumor[r]) / (s.ledger["tumor_initial"] + s.ledger["tumor_born"])))
    return out


@pytest.mark.slow
def test_the_ledger_balances_every_tick_with_every_therapy_event_in_a_run_and_a_batch():
    """infused + placed + born = alive in blood, tissue, memory and the disease + dead, for
    CAR T; initial + born = alive + dead + removed, for the disease's tumor cells; at
    every tick, with every therapy event active, and a batch's replicate keeps the same
    ledger as its single run."""
    m = TMEModel(ledger_config(), seeds=[5, 6])
    while m.running:
        m.step()
        for car_t, tumor in balances(m):
            assert abs(car_t) < 1e-12 and abs(tumor) < 1e-12, (m.steps, car_t, tumor)
    g = m.replicas[0].systemic.ledger
    # every flow was exercised: cells entered the disease and left it, divided and died on
    # both sides, and the therapy removed and killed tumor cells
    assert min(g[k] for k in ("infused", "placed", "blood_born", "blood_died", "lattice_born", "lattice_died",
                              "entered", "returned", "tumor_born", "tumor_died", "tumor_removed")) > 0
    assert len(m.replicas[0].systemic.products) == 3 and m.replicas[0].event_log[-1]["kind"] == "mrd"
    single = TMEModel(ledger_config(seed=6))
    while single.running:
        single.step()
    assert single.systemic.ledger == m.replicas[1].systemic.ledger


def test_the_disease_holds_only_the_car_t_the_patient_sent_it():
    """Entry from blood is realised on the lattice: without egress, the disease's CAR T
    are at most those that entered and divided there, and blood lost exactly the cells
    that entered."""
    cfg = ledger_config(therapy=[{"kind": "infusion", "day": 0.0, "dose_cells": 1e8}],
                        car_t={"egress_per_min": 0.0, "divide_probability": 0.0, "death_per_min": 0.0},
                        time={"tick_min": 12, "duration_days": 1.0},
                        patient={**ledger_config().patient.model_dump(), "distribution_out_per_min": 0.0,
                                 "contraction_per_min": 0.0, "memory_per_min": 0.0, "expansion_per_min": 0.0,
                                 "homeostatic_per_min": 0.0, "normal_antigen_cells": 0.0})
    m = TMEModel(cfg)
    while m.running:
        m.step()
    g = m.systemic.ledger
    assert g["entered"] > 1e6
    assert coupling.lattice_car_t(m)[0] == g["entered"]
    assert m.systemic.blood_total == 1e8 - g["entered"]


def test_super_individuals_lose_their_members_one_by_one():
    """Apoptosis at rate r: agents of 100 cells keep e^(-r t) of their cells (a binomial
    thinning, the agent dying with its last member), as 100 times as many single cells do."""
    r, ticks = 2e-4, 1000
    alive = {}
    for scale in (1, 100):
        cfg = scenario(tumor={"archetype": "dispersed", "initial_cells": 3000 // scale, "apoptosis_per_min": r},
                       patient={"burden_scale": scale})
        m = TMEModel(cfg, backend=BE)
        for _ in range(ticks):
            m.step()
        alive[scale] = float(coupling.burden(m)[0])
        if scale == 100:
            w = m.tumor.weight[m.tumor.alive]
            assert (w > 0).all() and (w < 100).all() and len(w) == 30  # thinned, none gone yet
    expect = 3000 * math.exp(-r * 6.0 * ticks)
    for scale, n in alive.items():
        assert abs(n - expect) < 4 * math.sqrt(3000 * 0.3 * 0.7), (scale, n, expect)


def test_a_car_t_agent_meets_at_most_its_weight_of_a_targets_cells():
    """An engagement of a CAR T agent of weight c with a tumor agent of weight w kills
    Binomial(min(c, w), p) cells; the share min(1, w / c) of its members that met a target
    sets its exhaustion increment."""
    for c, w in ((3.0, 10.0), (5.0, 2.0)):
        m, n = pairs_model(seed=3, car_t={"exhaustion_per_engagement": 0.1})
        m.tumor.weight[:] = w
        m.car_t.weight[:] = c
        m.step()  # engage
        m.step()  # the engagements end: kill and exhaust
        killed = m.systemic.ledger["tumor_died"]
        pairs = min(c, w)
        assert abs(killed / n - 0.6 * pairs) < 4 * math.sqrt(pairs * 0.24 / n), (c, w, killed / n)
        # (the exhaust rules at 38 mmHg add ~0.1%)
        assert m.car_t.exhaustion == pytest.approx(np.full(n, 0.1 * min(1.0, w / c)), rel=0.01)


def test_rare_cells_are_counted_at_the_patient_scale():
    """A frequency f of the patient's cells is antigen-negative: whole agents and one
    remainder; the count grows with the weight (the burden) and the total is kept."""
    rng = np.random.default_rng(0)
    antigen = np.full(2000, 0.8)
    for weight in (1e3, 1e6, 5e7):
        a, w = rare_cells(antigen, np.full(2000, weight), 1e-6, rng)
        negative = w[a == 0].sum()
        assert abs(negative - 1e-6 * 2000 * weight) <= 1.0 and w.sum() == 2000 * weight
    a, w = rare_cells(antigen, np.full(2000, 1e3), 0.0, rng)
    assert (a == 0.8).all() and (w == 1e3).all()
    m = TMEModel(scenario(tumor={"archetype": "dispersed", "initial_cells": 500,
                                 "antigen": {"negative_fraction": 0.01}}, patient={"burden_scale": 1e4}), backend=BE)
    neg = m.tumor.weight[m.tumor.antigen == 0].sum()
    assert neg == pytest.approx(0.01 * 500 * 1e4, abs=1.0)


def test_dispersed_disease_is_sampled_from_the_patients_burden():
    """burden_cells sets the sample: burden / weight agents share the patient's cells, so
    a small disease is a few light agents and a large one many at the sample's weight."""
    for cells, agents in ((3.5e6, 1), (2.5e9, 250), (1e10, 1000)):
        cfg = scenario(tumor={"archetype": "dispersed", "burden_cells": cells, "antigen": {"negative_fraction": 0.0}},
                       patient={"burden_scale": 1e7})
        m = TMEModel(cfg, backend=BE)
        assert len(m.tumor) == agents and m.tumor.weight.sum() == cells
        assert m.tumor.weight.max() - m.tumor.weight.min() <= 1.0


def test_the_disease_grows_with_its_doubling_time_towards_its_capacity():
    """No therapy: the disease grows by the Gompertz law of the patient's total, doubling
    in ``doubling_days`` at the start; it is not held at its start by the sample's room."""
    cfg = scenario(tumor={"archetype": "dispersed", "initial_cells": 1000, "divide_per_min": 7.2e-4,
                          "apoptosis_per_min": 1e-5, "doubling_days": 5.0, "capacity_fold": 10.0},
                   patient={"burden_scale": 1e3})
    m = TMEModel(cfg, backend=BE)
    t = cfg.tumor
    alpha = gompertz_rate_per_min(t)
    assert alpha == pytest.approx(math.log(2) / (5.0 * 1440 * math.log(10)))
    for _ in range(2400):  # 10 days
        m.step()
    expect = float(gompertz_cells(2400 * 6.0, 1000.0, 1e4, alpha, t.apoptosis_per_min, t.divide_per_min)) * 1e3
    assert coupling.burden(m)[0] == pytest.approx(expect, rel=0.05)
    assert coupling.burden(m)[0] > 2.5 * 1e6


def history(burdens, days, circulating=None):
    h = History()
    for i, (d, b) in enumerate(zip(days, burdens)):
        h.append(day=d, burden=b, tumor_alive=b, circulating_tumor=0.0 if circulating is None else circulating[i],
                 blood_car_t=1.0, disease_car_t=0.0, cytokine=0.0, crs_grade=0, antigen_negative_fraction=0.0)
    return h


def test_the_three_response_depths_and_relapse_are_read_apart():
    cfg = PatientConfig(cr_below_cells=1e3, marrow_cells=1e6, mrd_sensitivity=1e-4, assessment_day=3.0)

    class Sys:
        baseline_burden = None

        def icans_score(self, *a):
            return 0.0

    days = [0, 1, 2, 3, 4, 5, 6]
    out = compute_outcomes(history([1e6, 5e4, 500, 50, 0, 0, 0], days), Sys(), cfg)
    assert out["time_to_cr_days"] == 2 and out["time_to_mrd_negative_days"] == 3
    assert out["time_to_extinction_days"] == 4 and out["extinct_at_end"] == 1.0 and math.isnan(out["relapse_day"])
    assert out["response_at_assessment"] == "CR" and out["mrd_negative_at_assessment"] == 1.0
    out = compute_outcomes(history([1e6, 500, 50, 20, 200, 2e3, 5e4], days), Sys(), cfg)
    assert out["time_to_cr_days"] == 1 and math.isnan(out["time_to_extinction_days"]) and out["relapse_day"] == 5
    assert out["response_at_end"] == "PR" and out["extinct_at_end"] == 0.0
    # a circulating cell is disease too: not extinct while one is left
    out = compute_outcomes(history([1e6, 0, 0, 0, 0, 0, 0], days, circulating=[0, 3, 0.4, 0, 0, 0, 0]), Sys(), cfg)
    assert out["time_to_extinction_days"] == 2


SAMPLED = {1: ([60, 60], 1000), 10: ([6, 60], 100)}
"""Weight -> (lattice shape, tumor agents): the same marrow at a tenth of its sites."""


def sampled_patient(scale: int, seeds: list[int]):
    shape, n = SAMPLED[scale]
    cfg = validate_config({
        "backend": "numpy", "lattice": {"shape": shape, "vessels": {"layout": "grid", "grid_spacing_sites": 3}},
        "time": {"tick_min": 12, "duration_days": 15, "fields_every_ticks": 2},
        "fields": {"oxygen": fixed(25.0), "adenosine": {"enabled": False}, "protons": {"enabled": False},
                   "ccl2": {"enabled": False}, "cxcl8": {"enabled": False}},
        "tumor": {"archetype": "dispersed", "initial_cells": n, "marrow_normal_cells": n},
        "monocyte": {"recruit_per_vessel_per_min": 0.0}, "granulocyte": {"recruit_per_vessel_per_min": 0.0},
        "patient": {"burden_scale": scale, "normal_antigen_cells": 0.0, "marrow_homing": 3.0,
                    "extravasation_ul_per_min": 1e-4,  # as configs/scale_whole.yaml
                    "circulating_tumor_fraction": 0.05, "cr_below_cells": 10.0},
        "therapy": [{"kind": "lymphodepletion", "day": -3}, {"kind": "infusion", "day": 0, "dose_cells": 3e4}]})
    m = TMEModel(cfg, seeds=seeds)
    while m.running:
        m.step()
    return m


@pytest.mark.slow
def test_a_patient_sampled_at_weight_10_matches_the_patient_simulated_whole():
    """Marrow disease of 1000 cells on a 60 x 60 lattice against the same marrow at a
    tenth of its sites and cells (weight 10), 12 patients each (seeds fixed): the
    burden on days 3 and 10, the worst CRS grade and the blood CAR T peak do not differ
    (two-sided Mann-Whitney U, p > 0.01). Three or so CAR T enter the whole disease in
    ten days and clear it: the sample must count its founders one by one. The full
    experiment: ``tme-abm experiment scale_consistency``."""
    seeds = list(range(40, 52))
    whole, sample = sampled_patient(1, seeds), sampled_patient(10, seeds)

    def series(m, key, day):
        h = [rep.history for rep in m.replicas]
        i = int(np.searchsorted(np.asarray(h[0]["day"]), day))
        return np.array([x[key][i] for x in h])

    for day in (3.0, 10.0):
        a, b = series(whole, "burden", day), series(sample, "burden", day)
        assert stats.mannwhitneyu(a, b).pvalue > 0.01, (day, np.median(a), np.median(b))
    for key in ("max_crs_grade", "peak_blood_car_t"):
        out = [np.array([r.outcomes()[key] for r in m.replicas]) for m in (whole, sample)]
        assert np.array_equal(*out) or stats.mannwhitneyu(*out).pvalue > 0.01, (key, [np.median(x) for x in out])
    assert series(whole, "burden", 10.0).mean() < 0.5 * series(whole, "burden", 0.0).mean()  # the CAR T act
