"""The complete dynamic state of a model between two ticks, as host arrays and JSON-able
scalars: what a checkpoint stores and what ``--resume`` restores."""

from __future__ import annotations

import numpy as np

from ..engine.diffusion import Sources


def get_state(model) -> tuple[dict[str, np.ndarray], dict]:
    """The state of ``model`` (a TMEModel): ``(arrays, meta)``.

    ``arrays`` maps "group/name" to host arrays (cell columns per population, the field
    solver's buffer, the sources for the next field solve, the history and the
    DataCollector's rows); ``meta`` holds JSON-able scalars (tick, time, systemic
    compartment, event log, Mesa's generator). Everything else (lattice, vessels, rules,
    timeline) is rebuilt from the config, so ``TMEModel(config)`` followed by
    :func:`set_state` continues exactly as the model that was saved. The random numbers
    are counter-based (seed, tick, stream, cell id): their state is the tick.
    """
    to_host = model.backend.to_host
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"steps": int(model.steps), "time_min": model.time_min, "running": bool(model.running),
                  "next_event": model.next_event, "event_log": model.event_log,
                  "systemic": model.systemic.get_state(), "populations": {},
                  "rng": model.rng.bit_generator.state}
    for p in model.populations:
        cols, pmeta = p.get_state()
        arrays.update({f"{p.kind}/{k}": v for k, v in cols.items()})
        meta["populations"][p.kind] = pmeta
    arrays["fields/buffer"], meta["fields_lead"] = model.fields.solver.get_state()
    arrays.update({f"sources/{k}": np.array(to_host(getattr(model.sources, k)), copy=True)
                   for k in ("sites", "secretion", "uptake")})
    arrays.update({f"history/{k}": v for k, v in model.history.arrays().items()})
    dc = model.datacollector.model_vars
    meta["datacollector_columns"] = list(dc)
    arrays["datacollector/rows"] = np.array([dc[k] for k in dc], dtype=np.float64).T.reshape(-1, len(dc))
    return arrays, meta


def set_state(model, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Restore a state from :func:`get_state` into a model built from the same config."""
    xp = model.backend.xp
    model.steps = int(meta["steps"])
    model.time_min = float(meta["time_min"])
    model.running = bool(meta["running"])
    model.next_event = int(meta["next_event"])
    model.event_log = list(meta["event_log"])
    model.rng.bit_generator.state = meta["rng"]
    model.systemic.set_state(meta["systemic"])
    model.update_products()
    model.occupancy[...] = 0
    model.occupancy[model.vessels_dev] = model.VESSEL
    for p in model.populations:
        prefix = f"{p.kind}/"
        p.set_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                    meta["populations"][p.kind])
        model.occupancy[p.data["site"]] = p.code
    model.mark_engaged()
    model.fields.solver.set_state(arrays["fields/buffer"], meta["fields_lead"])
    model.sources = Sources(xp.asarray(arrays["sources/sites"]),
                            xp.asarray(arrays["sources/secretion"], dtype=model.backend.dtype),
                            xp.asarray(arrays["sources/uptake"], dtype=model.backend.dtype))
    model.history.set_arrays({k[len("history/"):]: v for k, v in arrays.items() if k.startswith("history/")})
    rows = arrays["datacollector/rows"]
    model.datacollector.model_vars = {k: [float(x) for x in rows[:, j]]
                                      for j, k in enumerate(meta["datacollector_columns"])}
