"""The studies' statistics, taken from SciPy, give the numbers of their textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tme_abm.studies.experiments.analysis import same_verdict
from tme_abm.studies.statistics import auc_table, mean_ci, median_difference_ci, rate_difference_ci, roc_auc, wilson

Z95 = 1.959963984540054


def wilson_formula(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927)."""
    p = k / n
    den = 1 + Z95**2 / n
    mid = (p + Z95**2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 20, 37, 200])
def test_wilson_interval_is_the_score_interval(n):
    for k in range(n + 1):
        lo, hi = wilson(k, n)
        ref = wilson_formula(k, n)
        assert lo == pytest.approx(ref[0], abs=1e-9) and hi == pytest.approx(ref[1], abs=1e-9), (k, n)
        assert lo <= k / n <= hi
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_mean_interval_is_the_t_interval():
    rng = np.random.default_rng(2)
    for n in (2, 3, 7, 30):
        x = rng.normal(3.0, 2.0, n)
        m, lo, hi = mean_ci(np.append(x, [np.nan, np.inf]))  # non-finite values are left out
        half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        assert (m, lo, hi) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half), rel=1e-12)
    assert mean_ci(np.full(4, 0.25)) == (0.25, 0.25, 0.25)  # no spread
    m, lo, hi = mean_ci(np.array([1.5]))
    assert m == 1.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci(np.array([np.nan])))


def test_roc_auc_is_the_rank_sum_statistic():
    rng = np.random.default_rng(4)
    score = rng.integers(0, 5, 50).astype(float)  # many ties
    label = rng.random(50) < 0.3
    ranks = stats.rankdata(score)
    n1, n0 = int(label.sum()), int((~label).sum())
    assert roc_auc(score, label) == pytest.approx((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0), rel=1e-12)


def test_bootstrap_interval_covers_the_auc_and_narrows_with_more_runs():
    rng = np.random.default_rng(8)
    widths = []
    for n in (20, 320):
        label = rng.random(n) < 0.5
        runs = pd.DataFrame({"responded": label, "s": label * 0.7 + rng.normal(0, 0.5, n)})
        auc, _ = auc_table(runs, ["s"], seed=3, n_boot=1000)
        a = auc.iloc[0]
        assert a["ci_low"] < a["auc"] < a["ci_high"]
        widths.append(a["ci_high"] - a["ci_low"])
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(n): 4x for 16x the runs


def test_bootstrap_needs_two_runs_per_class():
    runs = pd.DataFrame({"responded": [True, False, False, False], "s": [1.0, 0.0, 0.5, 0.2]})
    auc, diffs = auc_table(runs, ["s", "s"], seed=0, n_boot=200)
    assert auc["auc"].iloc[0] == 1.0 and math.isnan(auc["ci_low"].iloc[0])


def test_newcombe_interval_of_a_difference_of_rates_matches_the_published_example():
    """Newcombe (1998), Stat Med 17:873, example (a), method 10: 56/70 - 48/80 = 0.2,
    95% interval 0.0524 to 0.3339."""
    lo, hi = rate_difference_ci(56, 70, 48, 80)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_median_difference_interval_covers_a_shift_and_a_claim_of_no_difference_reads_the_p():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
    lo, hi = median_difference_ci(a, b, seed=5)
    assert lo < 3.0 < hi and hi - lo < 2.0
    assert median_difference_ci(a, b, seed=5) == (lo, hi)  # seeded
    assert same_verdict(0.2) == "agree (no difference found)" and same_verdict(0.01) == "differ"
    assert same_verdict(float("nan")).startswith("inconclusive")
