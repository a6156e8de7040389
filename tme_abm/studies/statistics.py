"""Statistics shared by sweeps and experiments, from SciPy: Wilson intervals for rates,
t intervals for means, ROC AUC (the Mann-Whitney U statistic) with BCa bootstrap
intervals, the ROC curve and Holm's step-down adjustment, which SciPy lacks, and
Benjamini-Hochberg's."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..engine import rng as crng

CONFIDENCE = 0.95
_STREAMS = crng.streams(9, "statistics", ("bootstrap", "median_bootstrap"))
"""The bootstrap's resamples, from the study's seed."""


def rate_difference_ci(ka: int, na: int, kb: int, nb: int) -> tuple[float, float]:
    """95% interval of the difference of two proportions ``ka/na - kb/nb``: Newcombe's
    hybrid score interval from the two Wilson intervals (Newcombe 1998, method 10)."""
    pa, pb = ka / na, kb / nb
    la, ua = wilson(ka, na)
    lb, ub = wilson(kb, nb)
    d = pa - pb
    return d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)


def median_difference_ci(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``median(a) - median(b)`` (each arm resampled
    apart, ``n_boot`` times, from a generator of ``seed``'s own stream)."""
    rng = crng.generator(seed, _STREAMS("median_bootstrap"))
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    d = np.median(a[ia], axis=1) - np.median(b[ib], axis=1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n (NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean of the finite values of ``x`` and its 95% t interval (NaN bounds for fewer
    than two values; the mean itself when they do not vary)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    sem = float(stats.sem(x))
    if sem == 0.0:  # no spread: SciPy's interval is undefined (scale 0)
        return m, m, m
    lo, hi = stats.t.interval(CONFIDENCE, len(x) - 1, loc=m, scale=sem)
    return m, float(lo), float(hi)


def _auc(pos, neg, axis: int = -1):
    """ROC AUC of positives ``pos`` against negatives ``neg``: the Mann-Whitney U of
    ``pos`` over n_pos n_neg (ties count half), along ``axis``."""
    u = stats.mannwhitneyu(pos, neg, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (np.shape(pos)[axis] * np.shape(neg)[axis])


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for boolean ``label``; NaN if a class is empty."""
    label = np.asarray(label, bool)
    if label.all() or not label.any():
        return math.nan
    return float(_auc(score[label], score[~label]))


def roc_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over every threshold."""
    order = np.argsort(-score, kind="stable")
    lab = label[order]
    tpr = np.concatenate([[0], np.cumsum(lab) / max(lab.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~lab) / max((~lab).sum(), 1)])
    return fpr, tpr


def _bootstrap(statistic, label: np.ndarray, seed: int, n_boot: int) -> tuple[float, float, np.ndarray]:
    """BCa 95% interval and bootstrap distribution of ``statistic(pos_index, neg_index)``,
    resampling the runs of each class apart (so no resample lacks a class; a statistic
    of several predictors sees the same runs for each: a paired bootstrap). Where every
    resample gives the same value (a perfect predictor), BCa is undefined and the
    interval is that value."""
    pos, neg = np.flatnonzero(label), np.flatnonzero(~label)
    if min(len(pos), len(neg)) < 2:
        return math.nan, math.nan, np.zeros(0)
    rng = crng.generator(seed, _STREAMS("bootstrap"))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below
        res = stats.bootstrap((pos, neg), statistic, n_resamples=n_boot, confidence_level=CONFIDENCE,
                              method="BCa", vectorized=True, rng=rng)
    dist = res.bootstrap_distribution
    if np.ptp(dist) == 0:
        return float(dist[0]), float(dist[0]), dist
    return float(res.confidence_interval.low), float(res.confidence_interval.high), dist


def _difference(f, g):
    """The statistic ``f - g`` (same arguments)."""
    return lambda pos, neg, axis=-1: f(pos, neg, axis) - g(pos, neg, axis)


def auc_table(runs: pd.DataFrame, predictors: list[str], seed: int, n_boot: int = 2000) -> tuple[pd.DataFrame, dict]:
    """ROC AUC of each predictor (a column of ``runs``) for durable response (the boolean
    column ``responded``) with a BCa bootstrap 95% interval, and the paired bootstrap of
    every difference; returns the table and {(a, b): (difference, low, high, p)}, p the
    two-sided bootstrap p value of a zero difference."""
    label = runs["responded"].to_numpy(bool)
    scores = {p: runs[p].to_numpy(float) for p in predictors}

    def auc_of(p):
        return lambda pos, neg, axis=-1: _auc(scores[p][pos], scores[p][neg], axis)

    rows = []
    for p in predictors:
        lo, hi, _ = _bootstrap(auc_of(p), label, seed, n_boot)
        rows.append({"predictor": p, "auc": roc_auc(scores[p], label), "ci_low": lo, "ci_high": hi,
                     "runs": len(label), "responders": int(label.sum())})
    diffs = {}
    for a in predictors:
        for b in predictors:
            if a == b:
                continue
            lo, hi, d = _bootstrap(_difference(auc_of(a), auc_of(b)), label, seed, n_boot)
            p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if len(d) else math.nan
            diffs[(a, b)] = (roc_auc(scores[a], label) - roc_auc(scores[b], label), lo, hi, p)
    return pd.DataFrame(rows), diffs


def adjusted_p(p, method: str) -> np.ndarray:
    """p values adjusted for a family of tests: ``holm`` (Holm's step-down, the
    family-wise error), ``fdr_bh`` (Benjamini-Hochberg, the false-discovery rate) or
    ``none`` (as they are). A
    test is significant at level alpha where its adjusted p is below alpha. A NaN p (a
    test without data) counts in the family as p = 1 and stays NaN."""
    p = np.asarray(p, float)
    filled = np.where(np.isfinite(p), p, 1.0)
    if method == "fdr_bh":
        out = stats.false_discovery_control(filled, method="bh") if len(p) else filled
    elif method == "none":
        out = filled
    elif method == "holm":
        m = len(p)
        order = np.argsort(filled, kind="stable")
        steps = np.maximum.accumulate((m - np.arange(m)) * filled[order])
        out = np.empty(m)
        out[order] = np.minimum(steps, 1.0)
    else:
        raise ValueError(f"unknown correction {method!r}: expected holm, fdr_bh or none")
    return np.where(np.isfinite(p), out, np.nan)
