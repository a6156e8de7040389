"""The calibration measures of docs/model.md ("Patient calibration", "Lesion
calibration"): per run (kills per CAR T per day, blood CAR T kinetics, CRS onset, the
lesion's oxygen, adenosine, pH, necrosis, antigen loss and exhaustion) and across a
folder of runs (``tme-abm summarize DIR``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..biology.growth import gompertz_birth_per_min, gompertz_rate_per_min
from ..biology.populations.car_t import days_to_exhaustion
from ..biology.rules import RuleSet
from ..config import Config
from ..io import RunFileError
from ..io.readers import Run, fmt_value, open_run, run_paths, summary_text


def calibration(run: Run, days: int = 14) -> dict:
    """The calibration measures of docs/model.md.

    Tumor cells killed by CAR T per non-exhausted lattice CAR T per day, for each
    whole day after infusion (the ``tumor_killed`` count is the last 24 h's kills,
    since killed cells are cleared after ``tumor.clearance_min`` = 1440 min); the day
    of the blood CAR T peak; blood CAR T (cells/uL) at its peak and on days 28 and 90
    (NaN when the run ends earlier); the CRS onset (first day >= 0 with grade >= 1;
    NaN if none) and the maximum grade."""
    ts = run.timeseries
    out = {"kills_per_car_t_per_day": [], "peak_blood_car_t_day": math.nan, "crs_onset_day": math.nan,
           "peak_blood_car_t_per_ul": math.nan, "blood_car_t_per_ul_day_28": math.nan,
           "blood_car_t_per_ul_day_90": math.nan, "max_crs_grade": math.nan}
    if ts.empty:
        return out
    for d in range(1, days + 1):
        w = ts[(ts["day"] > d - 1) & (ts["day"] <= d)]
        if w.empty or w["day"].iloc[-1] < d - 1e-6:
            break
        eff = float(w["car_t_effector"].mean())
        out["kills_per_car_t_per_day"].append(float(w["tumor_killed"].iloc[-1]) / eff if eff > 0 else math.nan)
    per_ul = ts["blood_car_t"].to_numpy() / (run.config.patient.blood_volume_ml * 1000.0)
    day = ts["day"].to_numpy()
    i = int(per_ul.argmax())
    out["peak_blood_car_t_day"], out["peak_blood_car_t_per_ul"] = float(day[i]), float(per_ul[i])
    for d in (28, 90):
        if day[-1] >= d - 1e-9:
            out[f"blood_car_t_per_ul_day_{d}"] = float(per_ul[int(np.searchsorted(day, d - 1e-9))])
    onset = ts.loc[(ts["day"] >= 0) & (ts["crs_grade"] >= 1), "day"]
    out["crs_onset_day"] = float(onset.iloc[0]) if len(onset) else math.nan
    out["max_crs_grade"] = float(ts.loc[ts["day"] >= 0, "crs_grade"].max())
    out.update(_lesion_calibration(run.config, ts))
    return out


def _lesion_calibration(cfg: Config, ts: pd.DataFrame) -> dict:
    """The lesion's measures (docs/model.md, "Lesion calibration"): at the first
    therapy event (the end of the burn-in) the median pO2 at tumor cells and at
    cell-free sites, the median adenosine and pH at tumor cells, the necrotic fraction
    and the share of the starting cells alive; the share of lattice CAR T exhausted on
    days 7 and 14; and the antigen-negative cells born per cell per day by loss at
    division at that steady state (loss per division x the Gompertz birth rate); the
    doubling time at a tenth of the carrying capacity, from the config; and the days
    a CAR T cell engaged 8 times a day (Halle 2016: 2-16) takes to exhaust at the
    exhaust rules of the lesion's median adenosine and pO2 (no myeloid contact)."""
    first = cfg.start_day + cfg.time.burn_in_days
    row = ts[ts["day"] <= first + 1e-9].iloc[-1]
    dead = row["tumor_necrotic"] + row["tumor_apoptotic"] + row["tumor_killed"]
    out = {k: float(row[k]) if k in row else math.nan
           for k in ("tumor_po2_median", "normal_po2_median", "tumor_adenosine_median", "tumor_ph_median")}
    out["necrotic_fraction"] = float(row["tumor_necrotic"] / max(row["tumor_alive"] + dead, 1))
    start = ts.iloc[0]
    out["lesion_kept"] = float(row["tumor_alive"] / start["tumor_alive"]) if start["tumor_alive"] else math.nan
    t = cfg.tumor
    alpha = gompertz_rate_per_min(t)
    capacity = t.carrying_capacity_cells or t.capacity_fold * (start["tumor_alive"] + start.get("marrow_normal", 0.0))
    niche = row["tumor_alive"] + row.get("marrow_normal", 0.0)
    birth = float(gompertz_birth_per_min(niche, capacity, alpha, t.apoptosis_per_min,
                                         t.divide_per_min)) if niche > 0 else math.nan
    out["antigen_loss_per_cell_per_day"] = t.antigen.loss_per_division * birth * 1440.0
    net = min(t.divide_per_min - t.apoptosis_per_min, alpha * math.log(10.0))
    out["doubling_days_at_tenth_capacity"] = math.log(2.0) / net / 1440.0 if net > 0 else math.inf
    c = cfg.car_t
    rules = RuleSet([c.rules], np)
    lesion = {"adenosine": out["tumor_adenosine_median"], "oxygen": out["tumor_po2_median"]}
    signals = {n: np.array([lesion.get(n, 0.0)]) for n in rules.behaviour_signals("exhaust")}
    factor = float(np.asarray(rules.factor("exhaust", signals)).reshape(-1)[0])
    out["days_to_exhaustion_8_per_day"] = days_to_exhaustion(
        8.0, c.exhaustion_per_engagement * factor, c.exhaustion_irreversible, c.exhaustion_recovery_per_min,
        c.engagement_min) if c.exhaustion_per_engagement > 0 and np.isfinite(factor) else math.inf
    for d in (7, 14):
        w = ts[ts["day"] >= d - 1e-9]
        total = w["car_t_effector"].iloc[0] + w["car_t_exhausted"].iloc[0] if len(w) else 0.0
        out[f"exhausted_share_day_{d}"] = float(w["car_t_exhausted"].iloc[0] / total) if total else math.nan
    return out


CALIBRATION_MEASURES = {
    "peak_blood_car_t_day": "blood CAR T peak day",
    "peak_blood_car_t_per_ul": "blood CAR T at the peak (cells/uL)",
    "expansion_fold": "expansion fold (peak / day 1)",
    "blood_car_t_per_ul_day_28": "blood CAR T on day 28 (cells/uL)",
    "blood_car_t_per_ul_day_90": "blood CAR T on day 90 (cells/uL)",
    "crs_onset_day": "CRS onset day (runs with CRS)",
    "crs_duration_days": "CRS duration, days (runs with CRS)",
    "tumor_po2_median": "tumor pO2 at the first event, median (mmHg)",
    "normal_po2_median": "cell-free tissue pO2 at the first event, median (mmHg)",
    "tumor_adenosine_median": "tumor adenosine at the first event, median (uM)",
    "tumor_ph_median": "tumor pHe at the first event, median",
    "necrotic_fraction": "necrotic fraction of the lesion at the first event",
    "lesion_kept": "alive tumor cells at the first event / at the start",
    "antigen_loss_per_cell_per_day": "antigen-negative cells born per tumor cell per day at steady state",
    "doubling_days_at_tenth_capacity": "tumor doubling time at 10% of capacity, days (from the config)",
    "days_to_exhaustion_8_per_day": "days to exhaustion at 8 engagements a day in the lesion",
    "exhausted_share_day_7": "exhausted share of lattice CAR T, day 7",
    "exhausted_share_day_14": "exhausted share of lattice CAR T, day 14",
}
"""The patient-level and lesion calibration measures across runs (docs/model.md,
"Patient calibration", "Lesion calibration")."""


def calibration_table(where) -> pd.DataFrame:
    """The patient-level and lesion calibration of the complete runs at ``where`` (a folder or glob,
    as :func:`open_runs`): per measure of :data:`CALIBRATION_MEASURES`, the number of
    runs it is defined in and its median, quartiles and range; then the share of runs
    with any CRS and with severe CRS (grade >= 3). Files that are not readable run files
    (or fail their checksums) are left out, each with its reason, in the table's
    ``attrs["skipped"]`` as (path, reason) pairs."""
    per_run = []
    skipped: list[tuple[str, str]] = []
    for p in run_paths(where):
        try:
            run = open_run(p)
        except RunFileError as exc:
            skipped.append((str(p), str(exc)))
            continue
        if run.status != "complete":
            continue
        per_run.append({**calibration(run), **{k: run.outcomes[k] for k in ("expansion_fold", "crs_duration_days")}})
    if not per_run:
        why = f" ({len(skipped)} unreadable: {skipped[0][1]})" if skipped else ""
        raise RunFileError(f"{where}: no complete run files found{why}")
    df = pd.DataFrame(per_run)
    crs = df["max_crs_grade"] >= 1
    rows = []
    for key, label in CALIBRATION_MEASURES.items():
        v = df.loc[crs, key] if key.startswith("crs_") else df[key]
        v = v.dropna().astype(float)
        q = v.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_numpy() if len(v) else np.full(5, math.nan)
        rows.append({"measure": label, "runs": len(v), "median": q[2], "q25": q[1], "q75": q[3],
                     "min": q[0], "max": q[4]})
    for label, share in (("share with CRS (grade >= 1)", crs.mean()),
                         ("share with severe CRS (grade >= 3)", (df["max_crs_grade"] >= 3).mean())):
        rows.append({"measure": label, "runs": len(df), "median": float(share), "q25": math.nan, "q75": math.nan,
                     "min": math.nan, "max": math.nan})
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = skipped
    return table


def summarize_run(run: Run) -> tuple[dict, str]:
    """What ``tme-abm summarize RUN`` prints: the run's summary (:meth:`Run.summary`)
    with its ``calibration`` measures, and that as text."""
    info = run.summary()
    cal = info["calibration"] = calibration(run)
    text = summary_text(info)
    if cal["kills_per_car_t_per_day"]:
        text += ("\ncalibration (docs/model.md): kills per CAR T per day on days 1.. "
                 + " ".join(fmt_value(k) for k in cal["kills_per_car_t_per_day"])
                 + f"; blood CAR T peak day {fmt_value(cal['peak_blood_car_t_day'])}; "
                   f"CRS onset day {fmt_value(cal['crs_onset_day'])}")
    return info, text
