"""The patient: systemic ODEs against hand-solved cases, dose conservation, therapy
events at their time, CRS monotonicity, outcome classes at every boundary, bad timelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_rules import fixed

from tme_abm.biology.outcomes import OUTCOME_KEYS, classify_response
from tme_abm.biology.patient import Systemic
from tme_abm.biology.therapy import lq_survival, oxygen_dose_factor
from tme_abm.config import ConfigError, validate_config
from tme_abm.config.schema import PatientConfig
from tme_abm.engine.backend import make_backend
from tme_abm.model import TMEModel

BE = make_backend("numpy", "float64")


def patient(**kw):
    base = dict(expansion_per_min=0.0, contraction_per_min=0.0, trafficking_per_min=0.0,
                cytokine_clearance_per_min=0.0)
    return PatientConfig(**{**base, **kw})


def test_blood_pool_pure_contraction_and_pure_expansion_match_exponentials():
    s = Systemic(patient(contraction_per_min=1e-3))
    s.infuse(1e8, [], 0.0, 10)
    for _ in range(100):
        s.advance(0.0, 6.0, 0.0, 0.0)
    assert s.blood_total == pytest.approx(1e8 * math.exp(-1e-3 * 600), rel=1e-12)
    s = Systemic(patient(expansion_per_min=2e-3, expansion_half_burden=1e9))
    s.burden = 1e9  # antigen drive B/(B + K + P) = 1/2 while the pool P is negligible
    s.infuse(1.0, [], 0.0, 10)
    for _ in range(50):
        s.advance(0.0, 6.0, 0.0, 0.0)
    assert s.blood_total == pytest.approx(math.exp(1e-3 * 300), rel=1e-8)
    assert abs(s.ledger_residual()) < 1e-6 * s.blood_total


def test_cytokine_relaxes_to_source_over_clearance_exactly():
    s = Systemic(patient(cytokine_clearance_per_min=0.01, cytokine_per_engaged_car_t=1e-3))
    t = 0.0
    for _ in range(40):
        s.advance(t, 6.0, 1e4, 0.0)  # source 10 / min
        t += 6.0
    assert s.cytokine == pytest.approx(1000.0 * (1 - math.exp(-0.01 * 240)), rel=1e-12)


def test_lymphodepletion_boost_integrates_in_closed_form():
    s = Systemic(patient(expansion_per_min=1e-3, expansion_half_burden=1.0))
    s.burden = 1e12  # drive ~1 (P stays far below B)
    s.infuse(1.0, [], 0.0, 10)
    s.boost, s.boost_since_min, s.boost_tau_min = 2.0, 0.0, 1000.0
    t = 0.0
    for _ in range(100):
        s.advance(t, 6.0, 0.0, 0.0)
        t += 6.0
    expect = math.exp(1e-3 * (600 + 2.0 * 1000.0 * (1 - math.exp(-0.6))))
    assert s.blood_total == pytest.approx(expect, rel=1e-9)


def test_expansion_stops_once_the_pool_matches_the_burden():
    s = Systemic(patient(expansion_per_min=5e-3, contraction_per_min=1e-4, expansion_half_burden=1e9))
    s.burden = 1e9
    s.infuse(1e6, [], 0.0, 10)
    t = 0.0
    for _ in range(40_000):  # 170 days: the approach to the steady state is slow (~k_con)
        s.advance(t, 6.0, 0.0, 0.0)
        t += 6.0
    # steady state: k_exp * B / (B + K + P) = k_con  ->  P = B * k_exp / k_con - B - K
    assert s.blood_total == pytest.approx(1e9 * 50 - 2e9, rel=1e-3)


def test_crs_grade_is_monotone_in_cytokine_with_documented_thresholds():
    s = Systemic(PatientConfig())
    grades = [s.crs_grade(c) for c in np.linspace(0, 3000, 301)]
    assert grades == sorted(grades) and grades[0] == 0 and grades[-1] == 4
    assert [s.crs_grade(c) for c in (19.9, 20, 100, 400, 1500)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("burden, alive, expect", [
    (100.0, 10, "SD"), (35.0, 10, "PR"), (35.01, 10, "SD"), (173.0, 10, "PD"), (172.99, 10, "SD"),
    (0.0, 0, "CR"), (1.0, 1, "PR"),
])
def test_response_classes_at_their_boundaries(burden, alive, expect):
    assert classify_response(100.0, burden, alive) == expect


def small_patient(therapy, **over):
    data = {
        "seed": 3, "lattice": {"shape": [40, 40], "vessels": {"layout": "grid", "grid_spacing_sites": 5}},
        "time": {"tick_min": 6, "duration_days": 2, "field_substeps": 1},
        "tumor": {"archetype": "solid", "radius_sites": 8, "divide_per_min": 0.0, "apoptosis_per_min": 0.0},
        "car_t": {"move": {"speed_um_per_min": 0.0}, "death_per_min": 0.0, "divide_probability": 0.0},
        "patient": {"burden_scale": 1e6, "expansion_per_min": 0.0, "contraction_per_min": 0.0,
                    "trafficking_per_min": 0.01, "lattice_share": 1.0},
        "therapy": therapy,
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_config(data)


def test_infused_cells_are_conserved_between_blood_and_lattice():
    """Cells arrive from the blood and return to it (egress): blood + lattice = infused."""
    m = TMEModel(small_patient([{"kind": "infusion", "day": 0.0, "dose_cells": 300}],
                               car_t={"egress_per_min": 1e-3}), backend=BE)
    for _ in range(60):
        m.step()
        arrived = int((m.backend.to_host(m.car_t.product) == 1).sum())
        assert m.systemic.blood_total + arrived == pytest.approx(300.0, abs=1e-9)
    assert arrived > 50  # cells did reach the lattice through the vessels
    assert m.systemic.from_lattice > 5  # and some went back
    assert abs(m.systemic.ledger_residual()) < 1e-9
    assert m.event_log[0]["kind"] == "infusion" and m.event_log[0]["day"] == 0.0


def test_events_fire_at_their_time_and_change_what_they_should():
    cfg = small_patient([{"kind": "resection", "day": -1.0, "fraction": 0.5},
                         {"kind": "infusion", "day": 0.0, "dose_cells": 10}],
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
    assert m.systemic.baseline_burden == pytest.approx(len(m.tumor) * 1e6)


def test_resection_of_a_region_removes_exactly_the_cells_inside_it():
    cfg = small_patient([{"kind": "resection", "day": -0.5, "region": {"center_sites": [19.5, 12], "radius_sites": 4},
                          "wound_cytokine": 30.0},
                         {"kind": "infusion", "day": 0.0, "dose_cells": 10}])
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
                            fields={"oxygen": fixed(o2)}, lattice={"shape": [60, 60], "vessels": {"layout": "none"}})
        m = TMEModel(cfg, backend=BE)
        m.step()
        return m.tumor.counts()["tumor_apoptotic"], len(m.tumor)

    for o2 in (38.0, 0.5):
        k, n = killed(o2)
        p = 1 - lq_survival(4.0 * oxygen_dose_factor(o2, 3.0, 3.0), 0.3, 0.03)
        assert abs(k / n - p) < 4 * math.sqrt(p * (1 - p) / n), (o2, k / n, p)
    assert killed(0.5)[0] < 0.7 * killed(38.0)[0]


def test_mrd_leaves_the_residual_cells():
    m = TMEModel(small_patient([{"kind": "mrd", "day": -0.5, "residual_cells": 7},
                                {"kind": "infusion", "day": 0.0, "dose_cells": 10}]), backend=BE)
    m.step()
    assert m.tumor.counts()["tumor_alive"] == 7


def test_outcomes_are_reported_at_the_end():
    m = TMEModel(small_patient([{"kind": "infusion", "day": 0.0, "dose_cells": 300}],
                               patient={"assessment_day": 1.0}), backend=BE)
    while m.running:
        m.step()
    out = m.outcomes()
    assert tuple(out) == OUTCOME_KEYS  # the columns a sweep's outcome table declares
    assert out["response_at_assessment"] in ("CR", "PR", "SD", "PD")
    # no expansion: the pool peaks in the infusion tick (after that tick's arrivals) and only falls
    assert 250 < out["peak_blood_car_t"] <= 300 and out["peak_blood_car_t_day"] <= 0.01
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
                         {"kind": "infusion", "day": 0.0, "dose_cells": 10}],
                        monocyte={"initial_cells": 300}, granulocyte={"initial_cells": 300})
    m = TMEModel(cfg, backend=BE)
    n0 = len(m.monocytes) + len(m.granulocytes)
    m.step()
    removed = m.event_log[0]["myeloid_removed"]
    assert abs(removed / n0 - 0.6) < 4 * math.sqrt(0.24 / n0)
    assert m.systemic.boost == 2.0 and m.systemic.boost_tau_min == 5.0 * 1440
