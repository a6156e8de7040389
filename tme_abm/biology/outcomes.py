"""Per-run outcomes from the patient-level trajectory.

Response classes (volume-based RECIST equivalents, docs/model.md): complete response
(CR) when the disease is below what imaging or morphology detects
(``patient.cr_below_cells``); partial response (PR) at >= 65% reduction of the burden
from baseline; progressive disease (PD) at >= 73% increase; otherwise stable disease
(SD). Deeper than CR, two more depths are read apart: MRD-negative (tumor cells below
``patient.mrd_sensitivity`` x ``patient.marrow_cells``) and extinct (no tumor cell left:
no agent with a member and less than half a circulating cell). Each has its first day
from infusion; a relapse is the first day after CR at which the burden is back at the CR
threshold. Baseline is the burden at the first infusion (at the start when there is
none). Time to progression is the first day after the nadir at which the burden is >=
1.73 x the nadir (RECIST measures progression from the nadir). The expansion fold is the
blood CAR T peak over blood CAR T one day after the first infusion (after the
distribution phase); CRS onset is the first day >= 0 with grade >= 1, its duration the
time from onset to the end of the last tick with grade >= 1."""

from __future__ import annotations

import math

import numpy as np

PR_REDUCTION = 0.65
PD_INCREASE = 0.73
OUTCOME_KEYS = (
    "baseline_burden", "response_at_assessment", "assessment_day", "response_at_end", "burden_ratio_at_end",
    "nadir_burden", "time_to_nadir_days", "time_to_progression_days", "peak_blood_car_t", "peak_blood_car_t_day",
    "peak_expansion_over_baseline_burden", "max_crs_grade", "peak_cytokine", "icans_score",
    "antigen_negative_fraction_end", "expansion_fold", "crs_onset_day", "crs_duration_days",
    "time_to_cr_days", "relapse_day", "mrd_negative_at_assessment", "time_to_mrd_negative_days", "extinct_at_end",
    "time_to_extinction_days", "peak_disease_car_t",
)
"""The outcomes of a run, in the order :func:`compute_outcomes` gives them (docs/model.md)."""
OUTCOME_UNITS = {
    "baseline_burden": "tumor cells", "assessment_day": "day", "burden_ratio_at_end": "of baseline",
    "nadir_burden": "tumor cells", "time_to_nadir_days": "day", "time_to_progression_days": "day",
    "peak_blood_car_t": "CAR T cells", "peak_blood_car_t_day": "day",
    "peak_expansion_over_baseline_burden": "CAR T per tumor cell", "max_crs_grade": "grade 0-4",
    "peak_cytokine": "pg/mL", "icans_score": "risk 0-1", "antigen_negative_fraction_end": "of alive tumor cells",
    "expansion_fold": "of blood CAR T on day 1", "crs_onset_day": "day", "crs_duration_days": "day",
    "time_to_cr_days": "day", "relapse_day": "day", "mrd_negative_at_assessment": "1 if MRD-negative",
    "time_to_mrd_negative_days": "day", "extinct_at_end": "1 if extinct", "time_to_extinction_days": "day",
    "peak_disease_car_t": "CAR T cells",
}
"""What each numeric outcome is measured in (for people; run files carry UDUNITS)."""


def classify_response(baseline: float, burden: float, cr_below: float) -> str:
    """CR / PR / SD / PD of one time point against the baseline burden (CR: the burden
    below ``cr_below`` cells)."""
    if burden < cr_below:
        return "CR"
    if baseline <= 0:
        return "PD"  # tumor where there was none
    ratio = burden / baseline
    if ratio <= 1.0 - PR_REDUCTION:
        return "PR"
    if ratio >= 1.0 + PD_INCREASE:
        return "PD"
    return "SD"


class History:
    """The patient-level trajectory the outcomes are computed from: one host float per
    tick in each of :data:`COLUMNS`."""

    COLUMNS = ("day", "burden", "tumor_alive", "circulating_tumor", "blood_car_t", "disease_car_t", "cytokine",
               "crs_grade", "antigen_negative_fraction")
    """Per tick: the day; the patient's burden (disease plus circulating cells); the
    disease's alive tumor cells; circulating tumor cells; blood CAR T; CAR T in the
    disease (lattice x weight); systemic cytokine; CRS grade; the antigen-negative share
    of the disease."""

    def __init__(self):
        self.columns: dict[str, list[float]] = {k: [] for k in self.COLUMNS}

    def __getitem__(self, name: str) -> list[float]:
        return self.columns[name]

    def append(self, **values: float) -> None:
        """Add one tick: a value for every column."""
        for k in self.COLUMNS:
            self.columns[k].append(float(values[k]))

    def arrays(self) -> dict[str, np.ndarray]:
        """Every column as a float64 array (a checkpoint's copy)."""
        return {k: np.asarray(v, dtype=np.float64) for k, v in self.columns.items()}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the trajectory by :meth:`arrays` of a saved one."""
        missing = [k for k in self.COLUMNS if k not in arrays]
        if missing:
            raise ValueError(f"the saved history lacks {', '.join(missing)}: written by an older version")
        self.columns = {k: [float(x) for x in arrays[k]] for k in self.COLUMNS}


def compute_outcomes(history: History, systemic, patient) -> dict:
    """Outcomes of a run (host scalars; NaN where undefined, e.g. no progression).

    Args:
        history: the per-tick trajectory.
        systemic: the model's Systemic (baseline burden, thresholds).
        patient: the ``patient`` config section (assessment day, CRS thresholds).
    """
    day = np.asarray(history["day"], dtype=float)
    burden = np.asarray(history["burden"], dtype=float)
    alive = np.asarray(history["tumor_alive"], dtype=float)  # the disease's tumor cells
    blood = np.asarray(history["blood_car_t"], dtype=float)
    cyto = np.asarray(history["cytokine"], dtype=float)
    grade = np.asarray(history["crs_grade"], dtype=float)
    baseline = systemic.baseline_burden if systemic.baseline_burden is not None else float(burden[0])
    after = day >= 0.0 if (day >= 0.0).any() else np.ones_like(day, dtype=bool)

    def at_day(d):
        i = int(np.searchsorted(day, d, side="left"))
        return min(i, len(day) - 1)

    circulating = np.asarray(history["circulating_tumor"], dtype=float)
    cr_below = patient.cr_below_cells
    i_assess = at_day(patient.assessment_day)
    assessed = day[-1] >= patient.assessment_day - 1e-9
    post_b, post_d = burden[after], day[after]
    i_nadir = int(np.argmin(post_b))
    nadir, nadir_day = float(post_b[i_nadir]), float(post_d[i_nadir])
    ttp = math.nan
    later = np.flatnonzero((post_d > nadir_day) & (post_b >= (1.0 + PD_INCREASE) * nadir) & (post_b > 0))
    if later.size:
        ttp = float(post_d[later[0]])
    i_peak = int(np.argmax(blood))
    day1 = blood[at_day(1.0)] if day[-1] >= 1.0 - 1e-9 else math.nan
    crs = np.flatnonzero((grade >= 1) & (day >= 0.0))
    onset = float(day[crs[0]]) if crs.size else math.nan
    return {
        "baseline_burden": float(baseline),
        "response_at_assessment": classify_response(baseline, burden[i_assess], cr_below) if assessed else "NA",
        "assessment_day": float(patient.assessment_day),
        "response_at_end": classify_response(baseline, burden[-1], cr_below),
        "burden_ratio_at_end": float(burden[-1] / baseline) if baseline > 0 else math.nan,
        "nadir_burden": nadir,
        "time_to_nadir_days": nadir_day,
        "time_to_progression_days": ttp,
        "peak_blood_car_t": float(blood[i_peak]),
        "peak_blood_car_t_day": float(day[i_peak]),
        "peak_expansion_over_baseline_burden": float(blood[i_peak] / baseline) if baseline > 0 else math.inf,
        "max_crs_grade": int(grade.max()) if grade.size else 0,
        "peak_cytokine": float(cyto.max()) if cyto.size else 0.0,
        "icans_score": float(systemic.icans_score(float(cyto.max()), float(blood.max()))) if cyto.size else 0.0,
        "antigen_negative_fraction_end": float(history["antigen_negative_fraction"][-1]),
        "expansion_fold": float(blood[i_peak] / day1) if day1 > 0 else math.nan,
        "crs_onset_day": onset,
        "crs_duration_days": float(day[crs[-1]] - onset + (day[1] - day[0] if len(day) > 1 else 0.0))
        if crs.size else 0.0,
        **_depths(day, after, burden, alive + circulating, alive, circulating, patient, i_assess, assessed),
        "peak_disease_car_t": float(np.max(history["disease_car_t"])) if len(day) else 0.0,
    }


def _first(day: np.ndarray, when: np.ndarray) -> float:
    """The first day where ``when`` holds, NaN if never."""
    i = np.flatnonzero(when)
    return float(day[i[0]]) if i.size else math.nan


def _depths(day, after, burden, tumor, alive, circulating, patient, i_assess: int, assessed: bool) -> dict:
    """The response depths from infusion on: first days of CR, MRD negativity and
    extinction, and the relapse after CR (NaN where none)."""
    cr = (burden < patient.cr_below_cells) & after
    mrd_negative = tumor < patient.mrd_sensitivity * patient.marrow_cells
    extinct = (alive <= 0) & (circulating < 0.5)
    t_cr = _first(day, cr)
    relapse = _first(day, after & (day > t_cr) & (burden >= patient.cr_below_cells)) if np.isfinite(t_cr) \
        else math.nan
    return {
        "time_to_cr_days": t_cr,
        "relapse_day": relapse,
        "mrd_negative_at_assessment": float(mrd_negative[i_assess]) if assessed else math.nan,
        "time_to_mrd_negative_days": _first(day, mrd_negative & after),
        "extinct_at_end": float(extinct[-1]),
        "time_to_extinction_days": _first(day, extinct & after),
    }
