"""Property: any config is either refused by validation with a message that names a
key, or runs without an exception, without NaN or infinity in any field, count or row,
and with every configured therapy event in its window firing.

Configs are drawn by taking a small valid config, resolving every default, and setting
one to three of its keys (any leaf of the schema: rates, fields, rules, the patient,
therapy events, output intervals) to extreme, non-finite, boundary, wrongly typed or
random values. The number of examples is fixed (``derandomize``) so CI runs the same
cases in bounded time.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tme_abm.config import ConfigError, validate_config
from tme_abm.engine.backend import make_backend
from tme_abm.model import TMEModel

EXAMPLES = 300
MAX_TICKS = 6
BASE = {
    "name": "prop", "seed": 1, "backend": "numpy",
    "lattice": {"shape": [16, 18], "vessels": {"layout": "random", "density": 0.03}},
    "time": {"tick_min": 6, "duration_days": 0.025},  # 6 ticks
    "tumor": {"radius_sites": 4},
    "car_t": {"initial_cells": 6},
    "monocyte": {"initial_cells": 3},
    "granulocyte": {"initial_cells": 3},
    "therapy": [
        {"kind": "lymphodepletion", "day": 0.0},
        {"kind": "infusion", "day": 0.0, "dose_cells": 1.0e8},
        {"kind": "radiotherapy", "day": 0.008, "dose_gy": 2.0},
        {"kind": "resection", "day": 0.012, "fraction": 0.3},
        {"kind": "mrd", "day": 0.016, "residual_cells": 10},
    ],
    "output": {"snapshot_every_min": 6, "cell_snapshot_every_min": 6, "checkpoint_every_min": 6},
}
RESOLVED = validate_config(BASE).model_dump(mode="json")
KEY = re.compile(r"\b(?:" + "|".join(RESOLVED) + r")\.[A-Za-z0-9_]+|\b(?:"
                 + "|".join(k for k, v in RESOLVED.items() if not isinstance(v, (dict, list))) + r"): ")
"""A dotted config key (or a top-level key and its colon), as a refusal names the key."""


def _leaves(node, prefix=()) -> list[tuple]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*prefix, k))]
    if isinstance(node, list) and node:
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*prefix, i))]
    return [prefix]


LEAVES = [p for p in _leaves(RESOLVED) if p[0] not in ("name", "backend")]
EXTREMES = [0, 1, -1, 0.5, 2, 3, 1e-300, -1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf, True, False, "1",
            "", None, 2**63, 10**6, [], {}]
VALUES = st.one_of(st.sampled_from(EXTREMES), st.floats(allow_nan=True, allow_infinity=True),
                   st.integers(-10**9, 10**9))
SMALL_INTS = st.one_of(st.sampled_from([0, 1, 2, 3, -1, 1.5, math.nan, True, "8"]), st.integers(-5, 40))


def near(value):
    """Values of the same type as a default, from zero to far beyond it: most of these are
    valid, so the model runs with them."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.integers(0, max(2 * value, 3)), st.sampled_from([value * 10, value * 1000]))
    if isinstance(value, float):
        return st.one_of(st.sampled_from([0.0, value]), st.floats(0, max(abs(value), 1e-6) * 1e3),
                         st.sampled_from([abs(value) * f for f in (1e-9, 1e-3, 1e3, 1e9)]))
    return VALUES


@st.composite
def mutated_configs(draw):
    data = copy.deepcopy(RESOLVED)
    keys = draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=3, unique=True))
    for path in keys:
        node = data
        for part in path[:-1]:
            node = node[part]
        # the lattice's size stays small enough to run here (huge lattices are the memory
        # check's business, tested in test_config.py)
        if path[:2] == ("lattice", "shape"):
            node[path[-1]] = draw(SMALL_INTS)
        else:
            node[path[-1]] = draw(st.one_of(VALUES, near(node[path[-1]]), near(node[path[-1]]), near(node[path[-1]])))
    return data, [".".join(map(str, p)) for p in keys]


def _finite_state(m: TMEModel) -> None:
    assert np.isfinite(m.backend.to_host(m.fields.values)).all(), "a field is not finite"
    row = m.current_row()
    undefined = {"car_t_tumor_ratio"} | ({k for k in row if k.startswith("tumor_") and k.endswith("_median")}
                                         if row["tumor_alive"] == 0 else set())  # medians over no cell are NaN
    bad = {k: v for k, v in row.items() if k not in undefined and not math.isfinite(v)}
    assert not bad, f"row values not finite: {bad}"
    assert all(v >= 0 for k, v in row.items() if k.endswith(("_alive", "_effector", "monocytes", "granulocytes")))


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_configs())
def test_a_config_is_refused_with_a_named_key_or_runs_cleanly(case):
    data, keys = case
    try:
        cfg = validate_config(data, "prop.yaml")
        m = TMEModel(cfg, backend=make_backend("numpy", cfg.dtype))  # building places the cells: part of the check
    except ConfigError as exc:
        message = str(exc)
        assert KEY.search(message), (keys, message)
        return
    _finite_state(m)
    for _ in range(MAX_TICKS):
        if not m.running:
            break
        m.step()
        _finite_state(m)
    end = m.time_min
    due = [s for s in m.timeline if s.minute < end]
    fired = [(e["event"], e["day"]) for e in m.event_log]
    assert fired == [(s.index, s.day) for s in due], (keys, fired)
    m.fields.solver.close()
