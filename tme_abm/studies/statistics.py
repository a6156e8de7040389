"""Statistics shared by sweeps and experiments: intervals for rates and means, ROC AUC
with bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z95 = 1.959963984540054

def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n (NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + Z95**2 / n
    mid = (p + Z95**2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / den
    # the interval contains p; min/max only absorb rounding at p = 0 or 1
    return max(0.0, min(p, mid - half)), min(1.0, max(p, mid + half))


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% t interval (NaN bounds for fewer than two values)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for boolean ``label`` (Mann-Whitney U / n1 n0,
    ties counted half); NaN if a class is empty."""
    from scipy.stats import rankdata

    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over every threshold."""
    order = np.argsort(-score, kind="stable")
    lab = label[order]
    tpr = np.concatenate([[0], np.cumsum(lab) / max(lab.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~lab) / max((~lab).sum(), 1)])
    return fpr, tpr


def auc_table(runs: pd.DataFrame, predictors: list[str], seed: int, n_boot: int = 2000) -> tuple[pd.DataFrame, dict]:
    """ROC AUC of each predictor for durable response (CR or PR at the end of the run)
    with a percentile bootstrap 95% interval, and the paired bootstrap of every
    difference (same resamples); returns the table and {(a, b): (diff, low, high, p)}."""
    label = runs["responded"].to_numpy(bool)
    scores = {p: runs[p].to_numpy(float) for p in predictors}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0C]))
    n = len(label)
    boots = {p: [] for p in predictors}
    for _ in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        for p in predictors:
            boots[p].append(roc_auc(scores[p][idx], label[idx]))
    rows = []
    for p in predictors:
        b = np.array(boots[p], float)
        b = b[np.isfinite(b)]
        lo, hi = (np.percentile(b, [2.5, 97.5]).tolist() if len(b) else (math.nan, math.nan))
        rows.append({"predictor": p, "auc": roc_auc(scores[p], label), "ci_low": lo, "ci_high": hi, "runs": n,
                     "responders": int(label.sum())})
    diffs = {}
    for a in predictors:
        for b_ in predictors:
            if a == b_:
                continue
            d = np.array(boots[a], float) - np.array(boots[b_], float)
            d = d[np.isfinite(d)]
            point = roc_auc(scores[a], label) - roc_auc(scores[b_], label)
            if len(d):
                lo, hi = np.percentile(d, [2.5, 97.5])
                p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
            else:
                lo = hi = p = math.nan
            diffs[(a, b_)] = (point, float(lo), float(hi), p)
    return pd.DataFrame(rows), diffs
