"""Every biological default lives in tme_abm/biology/data/parameters.csv with its units and
a source (or an "assumption: ..."), and the config schema takes it from there: the
schema's default of each such key is ``parameter("<key>")``, equal to the table's value;
no other number of the biological sections is a default in code, but for the scenario
keys listed here (what a scenario or a treatment plan chooses, not what the biology is)."""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pydantic
import pytest

from tme_abm.biology.defaults import DATA, _number, default_parameters, parameter
from tme_abm.config import schema

SECTIONS = {"tumor": schema.TumorConfig, "car_t": schema.CarTConfig, "monocyte": schema.MonocyteConfig,
            "granulocyte": schema.GranulocyteConfig, "patient": schema.PatientConfig,
            "lattice.perfusion": schema.PerfusionConfig, "therapy.lymphodepletion": schema.LymphodepletionEvent,
            "therapy.resection": schema.ResectionEvent, "therapy.radiotherapy": schema.RadiotherapyEvent,
            "therapy.mrd": schema.MRDEvent, "therapy.infusion": schema.InfusionEvent}
"""The biological sections of a config and their schema classes."""
SCENARIO = {"tumor.radius_sites", "tumor.initial_cells", "tumor.marrow_normal_cells", "car_t.initial_cells",
            "car_t.arrival_per_vessel_per_min", "monocyte.initial_cells", "granulocyte.initial_cells",
            "patient.burden_scale", "patient.assessment_day", "therapy.resection.fraction",
            "therapy.radiotherapy.fractions", "therapy.radiotherapy.interval_days", "therapy.radiotherapy.dose_gy",
            "therapy.mrd.residual_cells"}
"""Numbers a scenario or a treatment plan sets (lesion size, cells placed, the patient's
weight, the assessment day, the resected share, the radiotherapy plan)."""
TABLE = default_parameters()


def numeric_defaults(cls, prefix: str) -> dict[str, object]:
    """Dotted key -> default of every numeric (or list of numbers) field of ``cls``."""
    out = {}
    for name, f in cls.model_fields.items():
        default = f.get_default(call_default_factory=True)
        if isinstance(default, pydantic.BaseModel):
            out.update(numeric_defaults(type(default), f"{prefix}.{name}"))
        elif isinstance(default, bool) or default is None:
            continue
        elif isinstance(default, int | float) or (isinstance(default, list) and default
                                                  and all(isinstance(v, float) for v in default)):
            out[f"{prefix}.{name}"] = default
    return out


DEFAULTS = {k: v for prefix, cls in SECTIONS.items() for k, v in numeric_defaults(cls, prefix).items()}
DEFAULTS |= {f"therapy.{d}.{k}": v for d, ks in schema.DRUG_DEFAULTS.items() for k, v in ks.items()}
DEFAULTS = {k.replace("therapy.infusion.product", "car_t.product"): v for k, v in DEFAULTS.items()}


def test_the_table_has_units_and_a_source_for_every_row():
    with open(DATA / "parameters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(TABLE) > 80  # no key twice
    for row in rows:
        assert row["units"].strip() and len(row["source"].strip()) > 10, row["key"]


def test_every_biological_default_comes_from_the_table_and_nothing_else_does():
    assert set(DEFAULTS) - SCENARIO == set(TABLE)  # each table key is a default, each default a table key
    for key in TABLE:
        assert DEFAULTS[key] == parameter(key), key


def test_the_schema_reads_each_default_from_the_table_by_its_key():
    """The schema's source, not only its values: each table key's default is written
    ``parameter("<key>")`` (so a literal that happens to equal the table is refused)."""
    tree = ast.parse(Path(schema.__file__).read_text())
    called = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "id", None) == "parameter" and isinstance(node.args[0], ast.Constant)}
    drug_keys = {k for k in TABLE if k.startswith(("therapy.tocilizumab", "therapy.corticosteroid"))}
    assert called | drug_keys == set(TABLE)


@pytest.mark.parametrize("text, value", [("0.1 / 1440", 0.1 / 1440.0), ("ln(2) / (2 * 1440)", math.log(2) / 2880.0),
                                         ("1e-5", 1e-5), ("-3", -3.0)])
def test_table_values_are_numbers_or_their_derivation(text, value):
    assert _number(text) == value


@pytest.mark.parametrize("text", ["__import__('os')", "2 ** 10", "exp(1)", "x"])
def test_table_values_refuse_anything_else(text):
    with pytest.raises(ValueError, match="not a number or an expression"):
        _number(text)
