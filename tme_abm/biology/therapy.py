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
  them (from the centre out, leaving the margin; outermost first; or at random), with a
  systemic cytokine pulse from the wound;
* ``radiotherapy``: each fraction kills tumor cells (a binomial number of each agent's
  members) with linear-quadratic survival
  ``exp(-a D_eff - b D_eff^2)``, ``D_eff = D * OER(pO2) / OER_max``,
  ``OER(p) = (OER_max p + K) / (p + K)`` (Alper-Howard-Flanders), so hypoxic cells
  resist; its immunogenic effects: a CXCL10 pulse at the surviving tumor cells, which
  also become more susceptible to bystander killing (DeSelm 2018), vascular
  normalisation (more microvessels at the lesion's sites) and the death of a share of
  the lattice's monocytes and granulocytes;
* ``mrd``: minimal residual disease: all but ``residual_cells`` patient tumor cells are
  removed (whole agents in random order, the last one trimmed to the count);
* ``tocilizumab`` and ``corticosteroid`` (one event type, a drug against CRS): its
  ``effect`` decays with its half-life; tocilizumab blocks that share of IL-6 signalling
  (CRS signs fall; the cytokine itself is not cleared faster), a corticosteroid
  suppresses that share of myeloid activation and IL-6 production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import rng as crng
from . import coupling
from .host import Host
from .populations.tumor import ALIVE, APOPTOTIC

_STREAMS = crng.streams(5, "therapy", ("lymphodepletion", "resection_order", "resection_tie", "radiotherapy", "mrd",
                                       "radiotherapy_myeloid"))


@dataclass(frozen=True)
class Scheduled:
    """One firing: an event (or one radiotherapy fraction) at a minute of the run."""

    minute: float
    day: float
    index: int
    event: Any
    """The config's event (``therapy.<index>``)."""


def schedule(cfg) -> list[Scheduled]:
    """The firings of ``cfg.therapy`` in time order (radiotherapy: one per fraction)."""
    out = []
    for i, e in enumerate(cfg.therapy):
        days = [e.day + k * e.interval_days for k in range(e.fractions)] if e.kind == "radiotherapy" else [e.day]
        out += [Scheduled((d - cfg.start_day) * 1440.0, d, i, e) for d in days]
    return sorted(out, key=lambda s: (s.minute, s.index))


def apply(model: Host, item: Scheduled) -> list[dict]:
    """Apply one firing to every replicate of ``model``; returns each replicate's log
    entry (host scalars)."""
    e = item.event
    fn = {"infusion": _infusion, "lymphodepletion": _lymphodepletion, "resection": _resection,
          "radiotherapy": _radiotherapy, "mrd": _mrd, "tocilizumab": _drug, "corticosteroid": _drug}[e.kind]
    return [{"day": item.day, "time_min": item.minute, "kind": e.kind, "event": item.index, **done}
            for done in fn(model, e, item)]


def _by_replicate(model: Host, pop, idx):
    """Per replicate r, the positions among ``idx`` ((k,) indices into ``pop``) of its
    cells, in order (host); one replicate: all of them."""
    xp = model.backend.xp
    if model.replicates == 1:
        return [xp.arange(int(idx.shape[0]))]
    rep = model.backend.to_host(model.lattice.replicate_of(pop.data["site"][idx], xp))
    return [xp.asarray(np.flatnonzero(rep == r)) for r in range(model.replicates)]


def _infusion(model: Host, e, item) -> list[dict]:
    out = []
    burden, myeloid = model.burden(), model.myeloid_per_tumor()
    for r, rep in enumerate(model.replicas):
        sysm = rep.systemic
        total = float(burden[r]) + sysm.circulating_tumor  # the lattice's disease now, plus circulating cells
        if sysm.baseline_burden is None:
            sysm.baseline_burden = total
        sysm.inflammation = sysm.inflammation_index(total, float(myeloid[r]))
        p = sysm.infuse(e.dose_cells, e.product.edits, e.product.initial_exhaustion, e.product.divisions,
                        minute=item.minute)
        out.append({"dose_cells": e.dose_cells, "product": p, "fitness": sysm.products[p].fitness,
                    "inflammation_index": sysm.inflammation})
    model.update_products()
    return out


def _kill_myeloid(model: Host, fraction: float, purpose: str) -> np.ndarray:
    """Remove each of the lattice's monocytes and granulocytes with probability
    ``fraction`` (a number keyed by its id, from the stream ``purpose``); returns the
    (R,) cells removed per replicate (host)."""
    removed = np.zeros(model.replicates, dtype=np.int64)
    for pop in (model.monocytes, model.granulocytes):
        if len(pop) and fraction > 0:
            u = crng.uniform(model.backend.xp, model.seeds, model.steps, _STREAMS(purpose, pop.code), pop.data["id"])
            gone = u < fraction
            removed += model.host_counts(model.count(pop, gone))[0]
            pop.remove(gone, how="died")
    return removed


def _lymphodepletion(model: Host, e, item) -> list[dict]:
    removed = _kill_myeloid(model, e.myeloid_kill_fraction, "lymphodepletion")
    for rep in model.replicas:
        rep.systemic.lymphodeplete(e.expansion_boost, item.minute, e.boost_days * 1440.0)
    return [{"myeloid_removed": int(k)} for k in removed]


def _resection(model: Host, e, item) -> list[dict]:
    xp = model.backend.xp
    t = model.tumor
    n = len(t)
    lat = model.lattice
    mask = xp.zeros(n, dtype=bool)
    if e.region is not None:  # every tumor cell inside the ball
        coords = xp.stack(xp.unravel_index(t.data["site"] % lat.n_grid, lat.shape), axis=1).astype(xp.float64)
        d2 = ((coords - xp.asarray(e.region.center_sites, dtype=xp.float64)) ** 2).sum(axis=1)
        mask = d2 <= e.region.radius_sites**2
        removed = model.host_counts(model.count(t, mask))[0]
    else:
        removed = np.zeros(model.replicates, dtype=np.int64)
        for r, sel in enumerate(_by_replicate(model, t, xp.arange(n))):
            k = int(round(e.fraction * int(sel.shape[0])))
            if k == 0:
                continue
            ids = t.data["id"][sel]
            if e.order == "random":
                key = crng.uniform(xp, model.seeds, model.steps, _STREAMS("resection_order"), ids)
                remove_idx = xp.argsort(key)[:k]
            else:  # by distance from the centroid of the replicate's tumor cells
                coords = xp.stack(xp.unravel_index(t.data["site"][sel] % lat.n_grid, lat.shape),
                                  axis=1).astype(xp.float64)
                d2 = ((coords - coords.mean(axis=0)) ** 2).sum(axis=1)
                tie = crng.uniform(xp, model.seeds, model.steps, _STREAMS("resection_tie"), ids) * 1e-6
                sign = -1.0 if e.order == "outside" else 1.0  # inside: the centre first, the margin is left
                remove_idx = xp.argsort(sign * (d2 + tie))[:k]
            mask[sel[remove_idx]] = True
            removed[r] = k
    _remove_tumor(model, mask)
    out = []
    for rep, k in zip(model.replicas, removed):
        if e.region is not None or k:
            rep.systemic.add_cytokine(e.wound_cytokine)
        out.append({"tumor_removed": int(k)})
    return out


def _remove_tumor(model: Host, mask) -> None:
    """Remove the tumor agents where ``mask`` ((n,) bool) holds, recording their alive
    members as removed from the patient."""
    t = model.tumor
    coupling.record_lattice(model, "tumor_removed", model.weighted_count(t, model.backend.xp.where(
        mask, t.alive_weight(), 0.0)))
    t.remove(mask, how="cleared")


def oxygen_dose_factor(po2, oer_max: float, k_mmHg: float, xp=np):
    """``OER(pO2) / OER_max`` in [1/OER_max, 1): the fraction of the dose that acts."""
    return (oer_max * po2 + k_mmHg) / (po2 + k_mmHg) / oer_max


def lq_survival(dose_eff, alpha: float, beta: float, xp=np):
    """Linear-quadratic survival ``exp(-alpha D - beta D^2)``."""
    return xp.exp(-alpha * dose_eff - beta * dose_eff**2)


def _radiotherapy(model: Host, e, item) -> list[dict]:
    xp = model.backend.xp
    t = model.tumor
    alive = xp.flatnonzero(t.data["state"] == ALIVE)
    before = t.alive_weight()
    if alive.size:
        po2 = model.fields.at("oxygen", t.data["site"][alive]).astype(xp.float64)
        surv = lq_survival(e.dose_gy * oxygen_dose_factor(po2, e.oer_max, e.oer_k_mmHg, xp),
                           e.alpha_per_gy, e.beta_per_gy2, xp)
        cells = crng.binomial(xp, model.seeds, model.steps, _STREAMS("radiotherapy", item.index),
                              t.data["id"][alive], t.data["weight"][alive], 1.0 - surv)
        some = cells > 0
        t.thin(alive[some], cells[some], APOPTOTIC)
        survivors = xp.flatnonzero(t.alive)
        if e.chemokine_pulse > 0 and "cxcl10" in model.fields.index:
            model.fields.add_at("cxcl10", t.data["site"][survivors], e.chemokine_pulse)
        t.data["bystander"][survivors] = xp.maximum(t.data["bystander"][survivors], e.bystander_sensitization)
    if e.perfusion_gain != 1.0 and len(t):
        model.fields.scale_microvessels(np.unique(model.backend.to_host(t.data["site"])), e.perfusion_gain)
    killed = model.host_counts(model.weighted_count(t, before - t.alive_weight()))[0]
    myeloid = _kill_myeloid(model, e.myeloid_kill_fraction, "radiotherapy_myeloid")
    return [{"tumor_killed": float(k), "dose_gy": e.dose_gy, "myeloid_killed": int(n)}
            for k, n in zip(killed, myeloid)]


def _mrd(model: Host, e, item) -> list[dict]:
    """Keep ``residual_cells`` patient tumor cells per replicate (or all it has): alive
    agents in a random order, whole while they fit, the last one trimmed."""
    xp = model.backend.xp
    t = model.tumor
    alive = xp.flatnonzero(t.alive)
    total = model.host_counts(model.weighted_count(t, t.alive_weight()))[0]
    mask = xp.ones(len(t), dtype=bool)
    for sel in _by_replicate(model, t, alive):
        mine = alive[sel]
        key = crng.uniform(xp, model.seeds, model.steps, _STREAMS("mrd"), t.data["id"][mine])
        order = mine[xp.argsort(key)]
        w = t.data["weight"][order]
        ahead = xp.cumsum(w) - w  # cells kept before each agent
        keep = ahead < e.residual_cells
        t.data["weight"][order[keep]] = xp.minimum(w[keep], e.residual_cells - ahead[keep])
        mask[order[keep]] = False
    t.remove(mask, how="cleared")
    kept = model.host_counts(model.weighted_count(t, t.alive_weight()))[0]
    coupling.record(model, "tumor_removed", total - kept)
    return [{"tumor_removed": float(a - k), "residual_cells": float(k)} for a, k in zip(total, kept)]


def _drug(model: Host, e, item) -> list[dict]:
    tau = e.half_life_days * 1440.0 / np.log(2)
    for rep in model.replicas:
        rep.systemic.give_drug(e.kind, e.effect, item.minute, float(tau))
    return [{"effect": e.effect} for _ in model.replicas]
