"""Per-run outcomes from the patient-level trajectory.

Response classes (volume-based RECIST equivalents, docs/model.md): complete response (CR)
when no tumor cell is left alive; partial response (PR) at >= 65% reduction of the
burden from baseline; progressive disease (PD) at >= 73% increase; otherwise stable
disease (SD). Baseline is the burden at the first infusion (at the start when there is
none). Time to progression is the first day after the nadir at which the burden is
>= 1.73 x the nadir (RECIST measures progression from the nadir). The expansion fold
is the blood CAR T peak over blood CAR T one day after the first infusion (after the
distribution phase); CRS onset is the first day >= 0 with grade >= 1, its duration the
time from onset to the end of the last tick with grade >= 1.
"""

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
)
"""The outcomes of a run, in the order :func:`compute_outcomes` gives them (docs/model.md)."""
OUTCOME_UNITS = {
    "baseline_burden": "tumor cells", "assessment_day": "day", "burden_ratio_at_end": "of baseline",
    "nadir_burden": "tumor cells", "time_to_nadir_days": "day", "time_to_progression_days": "day",
    "peak_blood_car_t": "CAR T cells", "peak_blood_car_t_day": "day",
    "peak_expansion_over_baseline_burden": "CAR T per tumor cell", "max_crs_grade": "grade 0-4",
    "peak_cytokine": "pg/mL", "icans_score": "risk 0-1", "antigen_negative_fraction_end": "of alive tumor cells",
    "expansion_fold": "of blood CAR T on day 1", "crs_onset_day": "day", "crs_duration_days": "day",
}
"""What each numeric outcome is measured in (for people; run files carry UDUNITS)."""


def classify_response(baseline: float, burden: float, tumor_alive: float) -> str:
    """CR / PR / SD / PD of one time point against the baseline burden."""
    if tumor_alive <= 0:
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

    COLUMNS = ("day", "burden", "tumor_alive", "circulating_tumor", "blood_car_t", "cytokine", "crs_grade",
               "antigen_negative_fraction")

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
    alive = np.asarray(history["tumor_alive"], dtype=float)
    blood = np.asarray(history["blood_car_t"], dtype=float)
    cyto = np.asarray(history["cytokine"], dtype=float)
    grade = np.asarray(history["crs_grade"], dtype=float)
    baseline = systemic.baseline_burden if systemic.baseline_burden is not None else float(burden[0])
    after = day >= 0.0 if (day >= 0.0).any() else np.ones_like(day, dtype=bool)

    def at_day(d):
        i = int(np.searchsorted(day, d, side="left"))
        return min(i, len(day) - 1)

    # complete response: no tumor cell on the lattice and less than one circulating
    alive = alive + (np.asarray(history["circulating_tumor"], dtype=float) >= 1.0)
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
        "response_at_assessment": classify_response(baseline, burden[i_assess], alive[i_assess]) if assessed else "NA",
        "assessment_day": float(patient.assessment_day),
        "response_at_end": classify_response(baseline, burden[-1], alive[-1]),
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
    }
