"""Config validation, error messages, overrides, extra fields and the memory check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tme_abm.config import (
    ConfigError,
    accuracy_warnings,
    apply_overrides,
    check_memory,
    load_config,
    memory_estimate_bytes,
    validate_config,
)
from tme_abm.engine.backend import make_backend
from tme_abm.model import TMEModel

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_have_the_seven_fields_of_the_model():
    cfg = validate_config({})
    assert list(cfg.enabled_fields) == ["oxygen", "adenosine", "protons", "cxcl10", "ccl2", "cxcl8", "cytokine"]
    assert cfg.fields["oxygen"].diffusion_um2_per_min == 1e5
    assert cfg.fields["oxygen"].uptake_per_min["tumor"] == 10.0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    load_config(path)


def write(tmp_path, data) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_typo_key_is_named_with_suggestion_and_file(tmp_path):
    p = write(tmp_path, {"lattice": {"spacing_mu": 20}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "lattice.spacing_mu: unknown key" in msg
    assert "did you mean lattice.spacing_um" in msg


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"time": {"tick_min": -1}}, "time.tick_min: value -1"),
        ({"fields": {"oxygen": {"diffusion_um2_per_min": "fast"}}},
         "fields.oxygen.diffusion_um2_per_min: value 'fast'"),
        ({"lattice": {"dims": 3, "shape": [10, 10]}}, "has 2 entries but dims is 3"),
        ({"lattice": {"vessels": {"density": 1.5}}}, "lattice.vessels.density: value 1.5"),
        ({"tumor": {"radius_sites": 500}}, "does not fit the lattice"),
        ({"tumor": {"radius_sites": 8, "center_sites": [50, 5]}}, "centred at [50.0, 5.0] does not fit the lattice"),
        ({"tumor": {"center_sites": [50, 50, 50]}}, "tumor.center_sites [50.0, 50.0, 50.0]: needs 2 coordinates"),
        ({"tumor": {"center_sites": [50, float("nan")]}}, "tumor.center_sites.1: value nan is not allowed"),
        ({"edits": {"x": {"change": {"acidity": {"max_effect": 3}}}}},
         "edits.x.change.acidity {'max_effect': 3}: makes car_t.rules.kill.acidity invalid"),
        ({"car_t": {"rules": {"kil": {}}}}, "car_t.rules.kil: unknown behaviour (did you mean kill?)"),
        ({"car_t": {"rules": {"kill": {"x": {"signal": "adenosin", "direction": "down", "half_max": 1,
                                             "max_effect": 0.5}}}}}, "unknown signal 'adenosin'"),
        ({"car_t": {"rules": {"kill": {"adenosine": {"max_effect": 2}}}}}, "removes at most 1"),
        ({"car_t": {"product": {"edits": ["a2a_ko"]}}}, "unknown edit 'a2a_ko'"),
        ({"edits": {"x": {"remove": ["nonexistent"]}}}, "edits.x: 'nonexistent' is not a CAR T modulator"),
        ({"monocyte": {"move": {"chemotaxis_field": "il6"}}}, "monocyte.move.chemotaxis_field: 'il6'"),
        ({"time": {"duration_days": 0.001, "tick_min": 6}}, "shorter than one tick"),
        ({"fields": {"oxygen": {"enabled": False}}}, "fields.oxygen must be enabled"),
        ({"fields": {"oxygen": {"boundary": {"zmin": {"kind": "noflux"}}}}}, "a 2D lattice has faces"),
        ({"fields": {"il2": {"new": True, "uptake_per_min": {"tcell": 1}}}}, "fields.il2.uptake_per_min.tcell"),
        ({"backend": "gpu"}, "backend: value 'gpu'"),
        ({"granulocyte": {"move": {"chemotaxis_bias": 100}}}, "granulocyte.move.chemotaxis_bias: value 100"),
        ({"lattice": {"spacing_um": 0.001}}, "lattice.spacing_um: value 0.001"),
        ({"time": {"tick_min": 1e-9}}, "time.tick_min: value 1e-09"),
        ({"time": {"tick_min": 0.05, "duration_days": 3650}}, "105120000 ticks; at most 10,000,000"),
        ({"granulocyte": {"move": {"speed_um_per_min": 900}}}, "granulocyte.move.speed_um_per_min 900 at"),
        ({"fields": {"oxygn": {"initial": 1}}}, "fields.oxygn: not a default field (did you mean oxygen?)"),
        ({"fields": {"oxygen": {"new": True}}}, "fields.oxygen.new: oxygen is a default field"),
        ({"fields": {"protons": {"enabled": False}}, "tumor": {"rules": {"secrete_protons": {"x": {
            "signal": "oxygen", "direction": "up", "half_max": 1, "max_effect": 1}}}}},
         "tumor.rules.secrete_protons: a rule for a field that is not there (the field protons is disabled"),
        ({"time": {"duration_days": True}}, "time.duration_days: value True is not allowed"),
        ({"time": {"duration_days": "1"}}, "time.duration_days: value '1' is not allowed"),
        ({"therapy": [{"kind": "infusion", "day": float("nan"), "dose_cells": 1e8}]}, "therapy.0.infusion.day"),
        ({"output": {"snapshot_every_min": float("inf")}}, "output.snapshot_every_min: value inf"),
        ({"therapy": [{"kind": "radiotherapy", "day": -1, "oer_max": float("inf")}]}, "oer_max: value inf"),
        ({"therapy": [{"kind": "resection", "day": -1, "region": {"center_sites": [float("nan"), 1],
                                                                 "radius_sites": 3}}]}, "center_sites.0: value nan"),
        ({"car_t": {"initial_cells": 1e9}}, "car_t.initial_cells: value 1000000000.0 is not allowed"),
        ({"car_t": {"initial_cells": 6000}, "monocyte": {"initial_cells": 6000}}, "more cells than the 10000"),
    ],
)
def test_bad_values_are_refused_with_key_and_value(data, needle):
    with pytest.raises(ConfigError) as e:
        validate_config(data, "x.yaml")
    assert needle in str(e.value)


def test_dotted_overrides_set_nested_keys():
    data = apply_overrides({}, ["fields.oxygen.decay_per_min=0.2", "lattice.shape=[50, 60]", "seed=7"])
    cfg = validate_config(data)
    assert cfg.fields["oxygen"].decay_per_min == 0.2
    assert cfg.lattice.shape == [50, 60] and cfg.seed == 7
    assert cfg.fields["oxygen"].diffusion_um2_per_min == 1e5  # other defaults kept


@pytest.mark.parametrize("item", ["novalue", "=3", "a..b=1"])
def test_malformed_overrides_are_refused(item):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [item])


def test_extra_field_declared_in_config_is_solved():
    cfg = validate_config({
        "lattice": {"shape": [20, 20]},
        "fields": {"il2": {"new": True, "units": "pg/mL", "diffusion_um2_per_min": 800, "decay_per_min": 0.02,
                           "initial": 1.0, "secretion_per_min": {"tumor": 0.5}}},
    })
    assert "il2" in cfg.enabled_fields
    m = TMEModel(cfg, backend=make_backend("numpy", "float64"))
    assert m.fields.names[-1] == "il2" and m.fields.units[-1] == "pg/mL"
    before = float(m.fields.field("il2").sum())
    for _ in range(3):
        m.step()
    il2 = m.backend.to_host(m.fields.field("il2"))[0]  # the only replicate
    assert il2.sum() > before  # tumor secretion outweighs decay
    assert il2[10, 10] > il2[0, 0]  # highest where the tumor is


def test_lattice_too_large_for_memory_is_refused_with_estimate():
    cfg = validate_config({"lattice": {"dims": 3, "shape": [2000, 2000, 2000]}})
    assert memory_estimate_bytes(cfg) > 1e12
    with pytest.raises(ConfigError, match=r"needs about .* GiB.*available"):
        check_memory(cfg, 24 * 2**30)


def test_resolved_config_round_trips_through_yaml():
    cfg = validate_config({"seed": 3, "fields": {"il2": {"new": True, "decay_per_min": 0.1}}})
    again = validate_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_lod_uptake_and_vessels_are_warned_and_the_default_schemes_are_not():
    lod = validate_config({"time": {"tick_min": 6}, "fields": {"oxygen": {"scheme": "lod"}}})
    warned = [w for w in accuracy_warnings(lod) if w.startswith("fields.oxygen")]
    assert any("splitting error of cell uptake" in w for w in warned)
    assert any("vessel voxels only to first order" in w for w in warned)
    assert accuracy_warnings(validate_config({"time": {"tick_min": 6}})) == []
