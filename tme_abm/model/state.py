"""The complete dynamic state of one replicate of a model between two ticks, as host
arrays and JSON-able scalars: what a checkpoint stores and what ``--resume`` restores.

A replicate's state is the state a single run with its seed would have at the same
tick (sites, ids and fields as that run holds them), so a checkpoint written by a batch
resumes as a single run and the other way round."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine.diffusion import Sources
from ..engine.lattice import VESSEL

if TYPE_CHECKING:  # a type only: the model imports this module
    from .model import TMEModel


def get_state(model: TMEModel, replicate: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """The state of ``replicate`` of ``model`` (a TMEModel): ``(arrays, meta)``.

    ``arrays`` maps "group/name" to host arrays (cell columns per population, the field
    solver's buffer, the sources for the next field solve, the history and the
    DataCollector's rows); ``meta`` holds JSON-able scalars (tick, time, systemic
    compartment, event log). Everything else (lattice, vessels, rules, timeline) is
    rebuilt from the config and seed, so ``TMEModel(config)`` followed by
    :func:`set_state` continues exactly as the model that was saved. The random numbers
    are counter-based (seed, tick, stream, cell id): their state is the tick.
    """
    to_host = model.backend.to_host
    rep = model.replicas[replicate]
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"steps": int(model.steps), "time_min": model.time_min, "running": bool(model.running),
                  "next_event": model.next_event, "event_log": rep.event_log,
                  "systemic": rep.systemic.get_state(), "marrow_normal": rep.marrow_normal, "populations": {}}
    for p in model.populations:
        cols, pmeta = p.get_state(replicate)
        arrays.update({f"{p.kind}/{k}": v for k, v in cols.items()})
        meta["populations"][p.kind] = pmeta
    arrays["fields/buffer"], meta["fields_lead"] = model.fields.solver.get_state(replicate)
    if model.fields.microvessels is not None:
        arrays["fields/microvessels"] = model.fields.microvessels[replicate].copy()
    n_grid = model.lattice.n_grid
    sites = np.asarray(to_host(model.sources.sites))
    mine = sites // n_grid == replicate
    arrays["sources/sites"] = sites[mine] - replicate * n_grid
    for k in ("secretion", "uptake"):
        arrays[f"sources/{k}"] = np.array(to_host(getattr(model.sources, k)))[:, mine]
    arrays.update({f"history/{k}": v for k, v in rep.history.arrays().items()})
    dc = model.datacollector.model_vars
    meta["datacollector_columns"] = list(dc)
    rows = [[v if model.replicates == 1 else v[replicate] for v in dc[k]] for k in dc]
    arrays["datacollector/rows"] = np.array(rows, dtype=np.float64).T.reshape(-1, len(dc))
    return arrays, meta


def set_state(model: TMEModel, states: list[tuple[dict[str, np.ndarray], dict]]) -> None:
    """Restore every replicate of ``model`` (built from the same config and seeds), one
    state from :func:`get_state` per replicate, all at the same tick."""
    xp = model.backend.xp
    if len(states) != model.replicates:
        raise ValueError(f"{len(states)} states for a model of {model.replicates} replicates")
    meta0 = states[0][1]
    if any(m["steps"] != meta0["steps"] for _, m in states):
        raise ValueError(f"replicate states at different ticks: {[m['steps'] for _, m in states]}")
    model.steps = int(meta0["steps"])
    model.time_min = float(meta0["time_min"])
    model.running = bool(meta0["running"])
    model.next_event = int(meta0["next_event"])
    for rep, (arrays, meta) in zip(model.replicas, states):
        rep.event_log = list(meta["event_log"])
        rep.systemic.set_state(meta["systemic"])
        rep.marrow_normal = float(meta["marrow_normal"])
        rep.history.set_arrays({k[len("history/"):]: v for k, v in arrays.items() if k.startswith("history/")})
    model.update_products()
    model.occupancy[...] = 0
    model.occupancy[model.vessels_dev] = VESSEL
    for p in model.populations:
        prefix = f"{p.kind}/"
        p.set_state([({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                      meta["populations"][p.kind]) for arrays, meta in states])
        model.occupancy[p.data["site"]] = p.code
    model.mark_engaged()
    model.fields.solver.set_state([arrays["fields/buffer"] for arrays, _ in states], meta0["fields_lead"])
    if model.fields.microvessels is not None:
        model.fields.set_microvessels(np.stack([arrays["fields/microvessels"] for arrays, _ in states]))
    n_grid = model.lattice.n_grid
    model.sources = Sources(
        xp.asarray(np.concatenate([a["sources/sites"] + r * n_grid for r, (a, _) in enumerate(states)])),
        *(xp.asarray(np.concatenate([a[f"sources/{k}"] for a, _ in states], axis=1), dtype=model.backend.dtype)
          for k in ("secretion", "uptake")),
        every_site=bool(model.fields.perfused))
    rows = [a["datacollector/rows"] for a, _ in states]
    columns = meta0["datacollector_columns"]
    model.datacollector.model_vars = {
        k: [float(x) for x in rows[0][:, j]] if model.replicates == 1
        else [tuple(float(r[i, j]) for r in rows) for i in range(rows[0].shape[0])]
        for j, k in enumerate(columns)}
