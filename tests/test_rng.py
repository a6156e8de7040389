"""Random-number streams: one registry names every stream by (owner, purpose, sub-step,
part), so no two draws of a tick share a stream whatever the tick length; the numbers
are uniform and independent across cells and streams."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import tme_abm.bench
import tme_abm.model
import tme_abm.studies.calibration
import tme_abm.studies.statistics
import tme_abm.studies.sweep
from tme_abm.engine import rng as crng
from tme_abm.model import TMEModel

OWNERS = crng.registered()


def _decode(stream: int) -> tuple[int, int, int, int]:
    rest, part = divmod(stream, crng.PARTS)
    rest, sub = divmod(rest, crng.SUB_STEPS)
    code, purpose = divmod(rest, crng.OWNERS)
    return code, purpose, sub, part


def test_the_owners_are_the_scheduler_the_populations_the_therapy_setup_patient_and_studies():
    assert [(s.code, s.name) for s in OWNERS] == [(0, "schedule"), (1, "tumor"), (2, "car_t"), (3, "monocyte"),
                                                   (4, "granulocyte"), (5, "therapy"), (6, "setup"), (7, "patient"),
                                                   (8, "sweep"), (9, "statistics"), (10, "bench"),
                                                   (11, "calibration")]


def test_no_random_generator_is_seeded_outside_the_registry():
    """Every NumPy generator or seed sequence of the package is made in engine/rng.py
    (crng.generator, crng.derived_seed), from a registered stream."""
    package = Path(tme_abm.model.__file__).parents[1]
    found = [f"{p.relative_to(package)}:{i}" for p in package.rglob("*.py") if p.name != "rng.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"default_rng\(|SeedSequence\(|RandomState\(|np\.random\.seed\(", line)]
    assert found == []


@given(st.data())
def test_a_stream_number_names_its_owner_purpose_sub_step_and_part(data):
    owner = data.draw(st.sampled_from(OWNERS))
    purpose = data.draw(st.sampled_from(owner.purposes))
    sub = data.draw(st.integers(0, crng.SUB_STEPS - 1))
    part = data.draw(st.integers(0, crng.PARTS - 1))
    assert _decode(owner(purpose, sub, part)) == (owner.code, owner.purposes.index(purpose), sub, part)


def test_no_two_draws_share_a_stream_for_up_to_200_sub_steps():
    keys = [(s.code, p, sub, part) for s in OWNERS for p in s.purposes for sub in range(201)
            for part in range(crng.PARTS)]
    numbers = {s(p, sub, part) for s in OWNERS for p in s.purposes for sub in range(201) for part in range(crng.PARTS)}
    assert len(numbers) == len(keys)


def test_the_registry_refuses_clashes_and_out_of_range_draws():
    with pytest.raises(ValueError, match="clashes with 'car_t'"):
        crng.streams(2, "macrophage", ("move",))
    with pytest.raises(ValueError, match="clashes with 'tumor'"):
        crng.streams(9, "tumor", ("divide",))
    with pytest.raises(ValueError, match="different purposes"):
        crng.streams(1, "tumor", ("divide",))
    with pytest.raises(ValueError, match="distinct"):
        crng.streams(200, "twice", ("a", "a"))
    car_t = OWNERS[2]
    assert crng.streams(2, "car_t", car_t.purposes) is car_t
    with pytest.raises(KeyError, match="no random-number purpose 'dance'"):
        car_t("dance")
    with pytest.raises(ValueError, match="sub-step"):
        car_t("move", crng.SUB_STEPS)
    with pytest.raises(ValueError, match="part 16"):
        car_t("move", 0, crng.PARTS)


def test_cells_with_the_same_id_in_two_populations_draw_different_numbers():
    """The old stream numbers (population code x 64 + purpose + 16 x sub-move) gave CAR T
    sub-move 4 the monocytes' sub-move 0: CAR T cell k and monocyte k walked alike."""
    car_t, monocyte = OWNERS[2], OWNERS[3]
    ids = np.arange(1000)
    for sub in range(20):
        a = crng.uniform(np, 7, 3, car_t("move", sub), ids)
        b = crng.uniform(np, 7, 3, monocyte("move", 0), ids)
        assert not np.allclose(a, b)


def test_uniforms_are_uniform_and_independent_across_cells_and_streams():
    n = 200_000
    ids = np.arange(n)
    draws = {(s.name, p): crng.uniform(np, 11, 5, s(p), ids) for s in OWNERS[1:5] for p in s.purposes[:2]}
    for key, u in draws.items():
        counts, _ = np.histogram(u, bins=100, range=(0, 1))
        assert stats.chisquare(counts).pvalue > 1e-4, key
        assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n), key  # neighbouring ids
    keys = list(draws)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 5 / np.sqrt(n), (a, b)


def test_a_model_tick_never_draws_one_stream_twice(monkeypatch):
    """Every draw of a run with CAR T, myeloid cells and therapy, at a tick long enough
    for many sub-moves: no (tick, stream) is drawn twice."""
    drawn: dict[tuple[int, int], int] = {}
    real = crng.uniform

    def spy(xp, seed, tick, stream, ids, n_slots=None):
        drawn[(tick, stream)] = drawn.get((tick, stream), 0) + 1
        return real(xp, seed, tick, stream, ids, n_slots)

    monkeypatch.setattr(crng, "uniform", spy)
    real_keys = crng.replicate_keys

    def spy_keys(seed, tick, stream):  # the streams the compiled kernels draw from
        drawn[(tick, stream)] = drawn.get((tick, stream), 0) + 1
        return real_keys(seed, tick, stream)

    monkeypatch.setattr(crng, "replicate_keys", spy_keys)
    m = TMEModel({"seed": 4, "backend": "numpy", "lattice": {"dims": 2, "shape": [40, 40],
                                                             "vessels": {"layout": "random", "density": 0.01}},
                  "time": {"tick_min": 30, "duration_days": 1},
                  "tumor": {"archetype": "solid", "radius_sites": 8},
                  "car_t": {"initial_cells": 60, "arrival_per_vessel_per_min": 1e-3},
                  "monocyte": {"initial_cells": 30, "recruit_per_vessel_per_min": 1e-3},
                  "granulocyte": {"initial_cells": 30, "recruit_per_vessel_per_min": 1e-3},
                  "therapy": [{"kind": "lymphodepletion", "day": -0.5}, {"kind": "radiotherapy", "day": -0.4},
                              {"kind": "infusion", "day": 0, "dose_cells": 1e8}]})
    for _ in range(m.n_ticks):
        m.step()
    twice = {k: v for k, v in drawn.items() if v > 1}
    assert not twice, [(tick, _decode(s)) for tick, s in list(twice)[:5]]
    owners = {_decode(s)[0] for _, s in drawn}
    assert owners == {0, 1, 2, 3, 4, 5}
    car_t_moves = {_decode(s)[2] for _, s in drawn if _decode(s)[:2] == (2, OWNERS[2].purposes.index("move"))}
    assert max(car_t_moves) >= 4  # the sub-moves that used to collide were drawn


def test_a_batch_keys_each_replicate_as_its_single_run():
    """The vectorized keys of a batch are the single runs' keys, and a key's replicate
    picks its seed: replicate r of a batch draws what the run with seed r draws."""
    seeds = (0, 1, 7, 2**63 - 1, 123456789)
    for tick, stream in ((0, 0), (17, OWNERS[2]("move", 3, 2)), (10**6, 2**40 + 5)):
        assert list(crng.stream_keys(seeds, tick, stream)) == [crng.stream_key(s, tick, stream) for s in seeds]
    ids = np.arange(50)
    batch = crng.uniform(np, seeds, 9, 3, crng.key_of(np.repeat(np.arange(5), 50), np.tile(ids, 5)))
    for r, s in enumerate(seeds):
        np.testing.assert_array_equal(batch[50 * r:50 * (r + 1)], crng.uniform(np, s, 9, 3, ids))


def test_the_compiled_uniform_draws_the_array_codes_numbers(monkeypatch):
    """engine/fused_rng.py (the CPU's draws) and the array code of rng.uniform (its twin and
    the CuPy path) give the same numbers bit for bit: one seed (ids of any size, in a
    1-tuple or not), and a batch's keys with their replicates' seeds."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.arange(100), rng.integers(0, 2**62, 100)])  # ids past ID_BITS too
    keys = crng.key_of(rng.integers(0, 3, 200), rng.integers(0, 2**40, 200))
    draws = [(5, ids), ((5,), ids), ((5, 9, 2**63 - 1), keys), (5, ids.astype(np.int32)[:100]),
             (5, np.arange(0))]
    compiled = [crng.uniform(np, seed, 12, 77, x) for seed, x in draws]
    monkeypatch.setattr(crng, "uniform_of_ids", None)
    for (seed, x), c in zip(draws, compiled):
        array = crng.uniform(np, seed, 12, 77, x)
        assert c.dtype == array.dtype and c.shape == array.shape
        np.testing.assert_array_equal(c, array)


@pytest.mark.parametrize("n, p", [(1.0, 0.3), (5.0, 0.3), (40.0, 0.5), (1e6, 1e-5), (1e6, 1e-3), (1e6, 0.9999),
                                  (2.0, 1.0), (7.0, 0.0)])
def test_binomial_draws_have_the_binomial_mean_and_variance(n, p):
    """The counter-based binomial (super-individuals' deaths): exact inverse CDF for small
    tails, the normal approximation for large; mean and variance those of Binomial(n, p),
    counts in [0, n]; for n = 1 exactly ``u < p``, the draw of a single cell."""
    ids = np.arange(100_000)
    k = crng.binomial(np, 3, 7, 16, ids, np.full(len(ids), n), p)
    assert k.min() >= 0 and k.max() <= n and (k == np.round(k)).all()
    mean, var = n * p, n * p * (1 - p)
    assert abs(k.mean() - mean) <= 5 * math.sqrt(var / len(ids)) + 1e-12
    if var > 0:
        assert k.var() == pytest.approx(var, rel=0.05)
    if n == 1:
        assert (k == (crng.uniform(np, 3, 7, 16, ids) < p)).all()
