"""The live model (``tme-abm view --live CONFIG``): the model in Mesa's ``SolaraViz`` page,
with controls for what researchers vary most and the same pictures as a run file.

The controls edit the config before the model is built (SolaraViz builds a new model
with them on Reset):

- ``log10_dose``: CAR T cells per infusion, log10. Every infusion of the config gets it;
  a config without an infusion gets one at day 0.
- ``burden_scale``: ``patient.burden_scale``, patient tumor cells per lattice tumor cell, log10.
- ``myeloid_recruitment``: a factor on the monocytes' and granulocytes' recruitment per vessel.
- ``a2ar_ko``: the infused product (and CAR T on the lattice at the start) carry the A2AR knockout.
- ``lymphodepletion_days``: lymphodepletion this many days before infusion (0: none),
  keeping the config's lymphodepletion settings if it has one.

The run keeps its last day relative to infusion, so moving lymphodepletion earlier
starts the run earlier.
"""

from __future__ import annotations

import math

import pandas as pd
import solara
from mesa.visualization import SolaraViz
from mesa.visualization.utils import update_counter

from ...config import Config, load_config, validate_config
from ...model import TMEModel
from ...model.readouts import cell_table
from ..lattice import Geometry
from .pages import FieldControls, FramePanel, OutcomesTable, TimeSeriesPanel


def live_config(config, log10_dose: float, log10_burden_scale: float, myeloid_recruitment: float, a2ar_ko: bool,
                lymphodepletion_days: float) -> Config:
    """The config ``config`` (a path or a Config) with the live view's controls applied
    (module docstring)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    data = cfg.model_dump(mode="json")
    dose = 10.0 ** log10_dose
    therapy = [e for e in data["therapy"] if e["kind"] != "lymphodepletion"]
    infusions = [e for e in therapy if e["kind"] == "infusion"]
    if not infusions:
        infusions = [{"kind": "infusion", "day": 0.0, "dose_cells": dose}]
        therapy.append(infusions[0])
    for e in infusions:
        e["dose_cells"] = dose
        if a2ar_ko:
            e.setdefault("product", {}).setdefault("edits", [])
            e["product"]["edits"] = sorted({*e["product"]["edits"], "a2ar_ko"})
    if a2ar_ko:
        data["car_t"]["product"]["edits"] = sorted({*data["car_t"]["product"]["edits"], "a2ar_ko"})
    if lymphodepletion_days > 0:
        old = next((e for e in data["therapy"] if e["kind"] == "lymphodepletion"), {"kind": "lymphodepletion"})
        first = min(e["day"] for e in infusions)
        therapy.append({**old, "day": first - lymphodepletion_days})
    data["therapy"] = sorted(therapy, key=lambda e: e["day"])
    end_day = cfg.end_day
    data["time"]["duration_days"] = end_day - min([0.0, *(e["day"] for e in therapy)])
    data["patient"]["burden_scale"] = 10.0 ** log10_burden_scale
    for pop in ("monocyte", "granulocyte"):
        data[pop]["recruit_per_vessel_per_min"] *= myeloid_recruitment
    return validate_config(data, "live view")


class LiveModel(TMEModel):
    """A :class:`TMEModel` built from a config and the live view's controls, which keeps
    every tick's row (:attr:`rows`) for the time-series picture."""

    def __init__(self, config=None, seed: int = 0, log10_dose: float = 8.0, log10_burden_scale: float = 5.0,
                 myeloid_recruitment: float = 1.0, a2ar_ko: bool = False, lymphodepletion_days: float = 0.0):
        super().__init__(live_config(config, log10_dose, log10_burden_scale, myeloid_recruitment, a2ar_ko,
                                     lymphodepletion_days), seed=seed)
        self.rows = [self.current_row()]

    def step(self) -> None:
        super().step()
        self.rows.append(self.current_row())


def controls(config) -> dict:
    """SolaraViz ``model_params`` for a config: sliders starting at the config's own values."""
    cfg = load_config(config)
    doses = [e.dose_cells for e in cfg.therapy if e.kind == "infusion"]
    ld = [e.day for e in cfg.therapy if e.kind == "lymphodepletion"]
    first = min([e.day for e in cfg.therapy if e.kind == "infusion"], default=0.0)
    return {
        "config": str(config),
        "seed": {"type": "InputText", "value": str(cfg.seed), "label": "seed"},
        "log10_dose": {"type": "SliderFloat", "value": round(math.log10(doses[0]) if doses else 8.0, 1),
                       "min": 6.0, "max": 10.0, "step": 0.1, "label": "dose, log10 CAR T"},
        "log10_burden_scale": {"type": "SliderFloat", "value": round(math.log10(cfg.patient.burden_scale), 1),
                               "min": 2.0, "max": 8.0, "step": 0.1,
                               "label": "burden scale, log10"},
        "myeloid_recruitment": {"type": "SliderFloat", "value": 1.0, "min": 0.0, "max": 5.0, "step": 0.1,
                                "label": "myeloid recruitment, x"},
        "a2ar_ko": {"type": "Checkbox", "value": False, "label": "A2AR knockout"},
        "lymphodepletion_days": {"type": "SliderFloat", "value": float(first - ld[0]) if ld else 0.0,
                                 "min": 0.0, "max": 7.0, "step": 0.5,
                                 "label": "lymphodepletion, days"},
    }


@solara.component
def LiveLattice(model: LiveModel):
    """The tick counter and the lattice and one field now."""
    update_counter.get()
    fields = model.fields
    field, set_field = solara.use_state(fields.names[0])
    shape = tuple(model.lattice.shape)
    z, set_z = solara.use_state(shape[0] // 2 if len(shape) == 3 else 0)
    zz = z if len(shape) == 3 else None
    values = model.backend.to_host(fields.field(field)).reshape(shape)
    with solara.Column():
        solara.Div(children=[solara.Text(f"tick {model.steps}, day {model.day:.2f}")], classes=["tme-tick"])
        FieldControls(fields.names, field, set_field, shape, z, set_z)
        FramePanel(pd.DataFrame(cell_table(model)), f"cells, day {model.day:.2f}",
                   values[zz] if zz is not None else values, f"{field}, day {model.day:.2f}",
                   fields.units[fields.index[field]], Geometry.of(model.config), zz)


@solara.component
def LiveSeries(model: LiveModel):
    """The time series so far and, once the run has ended, its outcomes."""
    update_counter.get()
    with solara.Column():
        TimeSeriesPanel(pd.DataFrame(model.rows), model.event_log, model.day)
        OutcomesTable(model.outcomes() if not model.running else {})


def live_page(config):
    """The SolaraViz page of ``config``, built with its own values."""
    params = controls(config)
    start = {k: (v["value"] if isinstance(v, dict) else v) for k, v in params.items()}
    model = LiveModel(**start)
    return SolaraViz(model, components=[(LiveLattice, 0), (LiveSeries, 0)], model_params=params,
                     name=f"tme_abm live: {config}", play_interval=50)
