"""What a model reports: one row of host scalars per recorded tick (the time series and
the DataCollector) and the table of every cell (a cell snapshot)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine.lattice import axis_names
from ..engine.rng import ID_BITS

if TYPE_CHECKING:  # a type only: the model imports this module
    from .model import TMEModel

REPORTED = (
    "tick", "day", "tumor_alive", "tumor_necrotic", "tumor_apoptotic", "tumor_killed", "tumor_antigen_negative",
    "tumor_antigen_low", "tumor_antigen_high", "car_t_effector", "car_t_exhausted", "car_t_engaged",
    "car_t_kills", "monocytes", "monocytes_activated", "granulocytes", "hypoxic_fraction", "ph_mean",
    "adenosine_mean", "car_t_tumor_ratio", "burden", "blood_car_t", "systemic_cytokine", "crs_grade",
)
"""Model reporters of the DataCollector (host scalars; one column each)."""


def rows(model: TMEModel) -> list[dict[str, float]]:
    """The state of ``model`` now as host scalars, one row per replicate: tick and time,
    every population's counts, mean/min/max of every field, mean pH and hypoxic
    fraction, the patient (day, burden, blood CAR T, systemic cytokine, CRS grade) and
    the lattice's CAR T per alive tumor cell (docs/output.md lists the columns)."""
    on_device = {}  # name -> (R,) device array: one copy to the host for all of them
    for p in model.populations:
        on_device.update(p.counts())
    on_device.update(model.fields.summaries())
    on_device.update(_derived_field_summaries(model))
    on_device.update(_site_medians(model))
    xp = model.backend.xp
    values = model.backend.to_host(xp.stack([v.astype(xp.float64) for v in on_device.values()]))
    out = []
    for r, rep in enumerate(model.replicas):
        row = {"tick": float(model.steps), "time_min": model.time_min}
        row.update({k: float(v[r]) for k, v in zip(on_device, values)})
        s = rep.systemic
        row.update({"day": model.day, "burden": s.burden, "marrow_normal": rep.marrow_normal,
                    "blood_car_t": s.blood_total,
                    "systemic_cytokine": s.cytokine, "crs_grade": float(s.crs_grade())})
        alive = row["tumor_alive"]
        cart = row["car_t_effector"] + row["car_t_exhausted"]
        row["car_t_tumor_ratio"] = cart / alive if alive > 0 else float("inf") if cart > 0 else 0.0
        out.append(row)
    return out


def _derived_field_summaries(model: TMEModel) -> dict:
    """(R,) device arrays: mean pH from the proton field (pH = 6 - log10(H+ in uM)) and
    fraction of voxels below ``output.hypoxic_threshold_mmHg`` of oxygen, per replicate."""
    f = model.fields
    xp = model.backend.xp
    v = f.values.reshape(len(f.names), model.replicates, -1)
    out = {}
    if "protons" in f.index:
        h = xp.maximum(v[f.index["protons"]].astype(xp.float64), 1e-12)
        out["ph_mean"] = (6.0 - xp.log10(h)).mean(axis=1)
    out["hypoxic_fraction"] = (v[f.index["oxygen"]] < model.config.output.hypoxic_threshold_mmHg).mean(axis=1)
    return out


def grouped_median(values, group, n_groups: int, xp):
    """(n_groups,) median of ``values`` ((k,)) within each ``group`` ((k,) ints in
    [0, n_groups)), NaN for an empty group; on the device, without a host read."""
    k = int(values.shape[0])
    if k == 0:
        return xp.full(n_groups, xp.nan)
    values = values.astype(xp.float64)
    ordered = values[xp.lexsort(xp.stack([values, group.astype(xp.float64)]))]  # by group, then value
    counts = xp.bincount(group, minlength=n_groups)
    first = xp.cumsum(counts) - counts
    lo = first + xp.maximum(counts - 1, 0) // 2
    hi = first + counts // 2
    med = 0.5 * (ordered[xp.minimum(lo, k - 1)] + ordered[xp.minimum(hi, k - 1)])
    return xp.where(counts > 0, med, xp.nan)


def _site_medians(model: TMEModel) -> dict:
    """(R,) device arrays per replicate: medians of oxygen, adenosine and pH at the alive
    tumor cells' sites and of oxygen at the sites with no cell (normal tissue or marrow),
    the measures the literature reports (docs/model.md, "Lesion calibration")."""
    xp, f = model.backend.xp, model.fields
    n_rep, n_grid = model.replicates, model.lattice.n_grid
    t = model.tumor
    sites = t.data["site"][t.data["state"] == 0]
    empty = xp.flatnonzero(model.occupancy == 0)
    out = {}
    for name, field, where in (("tumor_po2_median", "oxygen", sites), ("normal_po2_median", "oxygen", empty),
                               ("tumor_adenosine_median", "adenosine", sites),
                               ("tumor_ph_median", "protons", sites)):
        if field not in f.index:
            continue
        v = f.at(field, where).astype(xp.float64)
        if field == "protons":
            v = 6.0 - xp.log10(xp.maximum(v, 1e-12))
        out[name] = grouped_median(v, where // n_grid, n_rep, xp)
    return out


def cell_table(model: TMEModel, replicate: int = 0) -> dict[str, np.ndarray]:
    """Every cell of ``replicate`` now, as host columns of equal length: the lattice
    indices of its site along each axis, named in C order (``y``, ``x``; ``z``, ``y``,
    ``x`` in 3D; int32), ``type`` (int8 occupancy code: 1 tumor, 2 CAR T, 3 monocyte,
    4 granulocyte), ``id`` (int64, unique within a type), and the columns of
    :meth:`Population.snapshot` (state, lineage, antigen, exhaustion)."""
    to_host = model.backend.to_host
    n_grid = model.lattice.n_grid
    parts = []
    for p in model.populations:
        site = to_host(p.data["site"])
        mine = site // n_grid == replicate
        cols = {k: to_host(v)[mine] for k, v in p.snapshot().items()}
        site = site[mine] - replicate * n_grid
        for axis, c in zip(axis_names(model.lattice.ndim), np.unravel_index(site, model.lattice.shape)):
            cols[axis] = c.astype(np.int32)
        cols["type"] = np.full(site.shape, p.code, dtype=np.int8)
        cols["id"] = to_host(p.data["id"])[mine] & ((1 << ID_BITS) - 1)
        parts.append(cols)
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


_COLUMN_ATTRS = {
    "time_min": ("min", "simulated time since the start of the run"),
    "tick": ("1", "ticks since the start of the run"),
    "day": ("day", "day relative to the first infusion"),
    "tumor_alive": ("1", "alive tumor cells on the lattice"),
    "tumor_necrotic": ("1", "necrotic tumor cells on the lattice (not yet cleared)"),
    "tumor_apoptotic": ("1", "apoptotic tumor cells on the lattice (not yet cleared)"),
    "tumor_killed": ("1", "tumor cells killed by CAR T cells on the lattice (not yet cleared)"),
    "tumor_antigen_negative": ("1", "alive tumor cells with antigen density below tumor.antigen.negative_below"),
    "tumor_antigen_low": ("1", "alive tumor cells with antigen density from tumor.antigen.negative_below to "
                               "tumor.antigen.high_from"),
    "tumor_antigen_high": ("1", "alive tumor cells with antigen density of tumor.antigen.high_from or more"),
    "car_t_effector": ("1", "CAR T cells on the lattice, not exhausted"),
    "car_t_exhausted": ("1", "CAR T cells on the lattice, exhausted"),
    "car_t_engaged": ("1", "CAR T cells on the lattice engaged with a tumor cell"),
    "car_t_kills": ("1", "kills made by the CAR T cells now on the lattice"),
    "monocytes": ("1", "monocytes on the lattice"),
    "monocytes_activated": ("1", "activated monocytes on the lattice"),
    "granulocytes": ("1", "granulocytes on the lattice"),
    "ph_mean": ("1", "mean pH over the lattice, from the proton field"),
    "hypoxic_fraction": ("1", "fraction of voxels with oxygen below output.hypoxic_threshold_mmHg"),
    "car_t_tumor_ratio": ("1", "CAR T cells per alive tumor cell on the lattice"),
    "burden": ("1", "tumor cells in the patient"),
    "marrow_normal": ("1", "normal marrow cells sharing the lattice's niche with the tumor"),
    "tumor_po2_median": ("mmHg", "median oxygen at alive tumor cells"),
    "normal_po2_median": ("mmHg", "median oxygen at sites with no cell (normal tissue or marrow)"),
    "tumor_adenosine_median": ("umol/L", "median adenosine at alive tumor cells"),
    "tumor_ph_median": ("1", "median pH at alive tumor cells"),
    "blood_car_t": ("1", "CAR T cells in the patient's blood"),
    "systemic_cytokine": ("pg/mL", "systemic IL-6-like cytokine"),
    "crs_grade": ("1", "cytokine release syndrome grade (0-4)"),
}


def column_attrs(name: str, field_units: dict[str, str]) -> dict[str, str]:
    """CF ``units`` (UDUNITS; "1" for counts and other pure numbers) and ``long_name`` of a
    row key (docs/output.md lists them)."""
    for field, units in field_units.items():
        for stat, word in (("mean", "mean"), ("min", "minimum"), ("max", "maximum")):
            if name == f"{field}_{stat}":
                return {"units": units, "long_name": f"{word} of the {field} field over the lattice"}
    units, long_name = _COLUMN_ATTRS.get(name, ("1", name.replace("_", " ")))
    return {"units": units, "long_name": long_name}
