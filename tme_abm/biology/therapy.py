"""The therapy timeline: config events applied to the model at their time.

Days are relative to the (first) infusion, day 0; the run starts at the earliest event
(``Config.start_day``). Each event fires in the ``therapy`` stage of the first tick
whose interval contains its time, is logged in ``model.event_log`` and written to the
run file. What each event does (docs/model.md, "Therapy"):

* ``infusion``: a product (edits, fitness set by the pre-infusion inflammation index)
  enters the blood pool;
* ``lymphodepletion``: removes a fraction of the lattice's myeloid cells and boosts
  early CAR T expansion;
* ``resection``: removes the tumor cells inside a region (a ball), or a fraction of
  them (outermost first, or at random), with a systemic cytokine pulse from the wound;
* ``radiotherapy``: each fraction kills alive tumor cells with linear-quadratic survival
  ``exp(-a D_eff - b D_eff^2)``, ``D_eff = D * OER(pO2) / OER_max``,
  ``OER(p) = (OER_max p + K) / (p + K)`` (Alper-Howard-Flanders), so hypoxic cells
  resist, and adds an immunogenic CXCL10 pulse at the surviving tumor cells;
* ``mrd``: minimal residual disease: all but ``residual_cells`` tumor cells are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import rng as crng
from .populations.tumor import ALIVE, APOPTOTIC

_STREAMS = crng.streams(5, "therapy", ("lymphodepletion", "resection_order", "resection_tie", "radiotherapy", "mrd"))


@dataclass(frozen=True)
class Scheduled:
    """One firing: an event (or one radiotherapy fraction) at a minute of the run."""

    minute: float
    day: float
    index: int
    event: object


def schedule(cfg) -> list[Scheduled]:
    """The firings of ``cfg.therapy`` in time order (radiotherapy: one per fraction)."""
    out = []
    for i, e in enumerate(cfg.therapy):
        days = [e.day + k * e.interval_days for k in range(e.fractions)] if e.kind == "radiotherapy" else [e.day]
        out += [Scheduled((d - cfg.start_day) * 1440.0, d, i, e) for d in days]
    return sorted(out, key=lambda s: (s.minute, s.index))


def apply(model, item: Scheduled) -> dict:
    """Apply one firing to ``model``; returns the log entry (host scalars)."""
    e = item.event
    entry = {"day": item.day, "time_min": item.minute, "kind": e.kind, "event": item.index}
    fn = {"infusion": _infusion, "lymphodepletion": _lymphodepletion, "resection": _resection,
          "radiotherapy": _radiotherapy, "mrd": _mrd}[e.kind]
    entry.update(fn(model, e, item))
    return entry


def _infusion(model, e, item) -> dict:
    sysm = model.systemic
    if sysm.baseline_burden is None:
        sysm.baseline_burden = model.burden()
    sysm.inflammation = sysm.inflammation_index(model.burden(), model.myeloid_per_tumor())
    p = sysm.infuse(e.dose_cells, e.product.edits, e.product.initial_exhaustion, e.product.divisions)
    model.update_products()
    return {"dose_cells": e.dose_cells, "product": p, "fitness": sysm.products[p].fitness,
            "inflammation_index": sysm.inflammation}


def _lymphodepletion(model, e, item) -> dict:
    removed = 0
    for pop in (model.monocytes, model.granulocytes):
        if len(pop):
            u = crng.uniform(model.backend.xp, model.seed, model.steps, _STREAMS("lymphodepletion", pop.code),
                             pop.data["id"])
            removed += pop.remove(u < e.myeloid_kill_fraction, how="died")
    sysm = model.systemic
    sysm.boost = e.expansion_boost
    sysm.boost_since_min = item.minute
    sysm.boost_tau_min = e.boost_days * 1440.0
    return {"myeloid_removed": removed}


def _resection(model, e, item) -> dict:
    xp = model.backend.xp
    t = model.tumor
    n = len(t)
    if e.region is not None:  # every tumor cell inside the ball
        coords = xp.stack(xp.unravel_index(t.data["site"], model.lattice.shape), axis=1).astype(xp.float64)
        d2 = ((coords - xp.asarray(e.region.center_sites, dtype=xp.float64)) ** 2).sum(axis=1)
        mask = d2 <= e.region.radius_sites**2
        k = int(mask.sum())
        t.remove(mask, how="cleared")
        model.systemic.cytokine += e.wound_cytokine
        return {"tumor_removed": k}
    k = int(round(e.fraction * n))
    if k == 0:
        return {"tumor_removed": 0}
    if e.order == "random":
        key = crng.uniform(xp, model.seed, model.steps, _STREAMS("resection_order"), t.data["id"])
        remove_idx = xp.argsort(key)[:k]
    else:  # outermost first: distance from the centroid of the tumor cells
        coords = xp.stack(xp.unravel_index(t.data["site"], model.lattice.shape), axis=1).astype(xp.float64)
        d2 = ((coords - coords.mean(axis=0)) ** 2).sum(axis=1)
        tie = crng.uniform(xp, model.seed, model.steps, _STREAMS("resection_tie"), t.data["id"]) * 1e-6
        remove_idx = xp.argsort(-(d2 + tie))[:k]
    mask = xp.zeros(n, dtype=bool)
    mask[remove_idx] = True
    t.remove(mask, how="cleared")
    model.systemic.cytokine += e.wound_cytokine
    return {"tumor_removed": k}


def oxygen_dose_factor(po2, oer_max: float, k_mmHg: float, xp=np):
    """``OER(pO2) / OER_max`` in [1/OER_max, 1): the fraction of the dose that acts."""
    return (oer_max * po2 + k_mmHg) / (po2 + k_mmHg) / oer_max


def lq_survival(dose_eff, alpha: float, beta: float, xp=np):
    """Linear-quadratic survival ``exp(-alpha D - beta D^2)``."""
    return xp.exp(-alpha * dose_eff - beta * dose_eff**2)


def _radiotherapy(model, e, item) -> dict:
    xp = model.backend.xp
    t = model.tumor
    alive = xp.flatnonzero(t.data["state"] == ALIVE)
    if alive.size == 0:
        return {"tumor_killed": 0, "dose_gy": e.dose_gy}
    po2 = model.fields.at("oxygen", t.data["site"][alive]).astype(xp.float64)
    surv = lq_survival(e.dose_gy * oxygen_dose_factor(po2, e.oer_max, e.oer_k_mmHg, xp),
                       e.alpha_per_gy, e.beta_per_gy2, xp)
    u = crng.uniform(xp, model.seed, model.steps, _STREAMS("radiotherapy", item.index), t.data["id"][alive])
    dead = alive[u >= surv]
    t.data["state"][dead] = APOPTOTIC
    t.data["death_min"][dead] = model.time_min
    t.events["died"] += int(dead.shape[0])
    if e.chemokine_pulse > 0 and "cxcl10" in model.fields.index:
        survivors = alive[u < surv]
        model.fields.add_at("cxcl10", t.data["site"][survivors], e.chemokine_pulse)
    return {"tumor_killed": int(dead.shape[0]), "dose_gy": e.dose_gy}


def _mrd(model, e, item) -> dict:
    xp = model.backend.xp
    t = model.tumor
    alive = xp.flatnonzero(t.data["state"] == ALIVE)
    keep_n = min(e.residual_cells, int(alive.shape[0]))
    key = crng.uniform(xp, model.seed, model.steps, _STREAMS("mrd"), t.data["id"][alive])
    keep = alive[xp.argsort(key)[:keep_n]]
    mask = xp.ones(len(t), dtype=bool)
    mask[keep] = False
    removed = int(mask.sum())
    t.remove(mask, how="cleared")
    return {"tumor_removed": removed, "residual_cells": keep_n}
