"""History matching (Vernon et al. 2010; Andrianakis et al. 2015): waves of simulations
that rule out the parameter sets whose target statistics cannot be within tolerance.

A wave runs a design of points (``points`` x ``replicates`` runs, as a sweep: batched,
resumable, locked); a Gaussian-process emulator (scikit-learn) of every target statistic
is fitted to all points so far, each point weighted by its statistic's sampling
variance; a candidate point x is implausible when, for some target j,

    I_j(x) = |mu_j(x) - z_j| / sqrt(var_j(x) + (tol_j / c)^2) >= c

(``mu_j``, ``var_j``: the emulator's mean and variance; ``z_j``, ``tol_j``: the target
and its tolerance; ``c``: the cutoff, 3 by Pukelsheim's rule). The next wave's design is
drawn from the candidates not ruled out. Coordinates are the unit cube of the priors
(log10 for log priors). docs/calibration.md describes the method and its outputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import qmc
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from ...engine import rng as crng
from .spec import CalibrationSpec
from .targets import STREAMS


def _bounds(prior) -> tuple[float, float]:
    """A prior's ends in its unit cube's scale (log10 for a log prior)."""
    return (math.log10(prior.low), math.log10(prior.high)) if prior.log else (prior.low, prior.high)


def to_unit(spec: CalibrationSpec, values: dict[str, float]) -> np.ndarray:
    """(D,) a point's coordinates in the unit cube of the priors."""
    out = []
    for k, p in spec.parameters.items():
        lo, hi = _bounds(p)
        v = math.log10(values[k]) if p.log else values[k]
        out.append((v - lo) / (hi - lo))
    return np.array(out)


def from_unit(spec: CalibrationSpec, u: np.ndarray) -> list[dict[str, float]]:
    """The parameter values of unit-cube points ((n, D) -> n mappings)."""
    out = []
    for row in np.atleast_2d(u):
        point = {}
        for (k, p), x in zip(spec.parameters.items(), row):
            lo, hi = _bounds(p)
            v = lo + x * (hi - lo)
            point[k] = float(10.0**v if p.log else v)
        out.append(point)
    return out


class Emulator:
    """A Gaussian-process emulator of one target statistic over the unit cube: a constant
    x anisotropic squared-exponential kernel plus a nugget, each training point's own
    sampling variance on the diagonal; outputs standardised. Fewer than 3 finite points:
    no emulator (it rules nothing out)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, var: np.ndarray):
        ok = np.isfinite(y) & np.isfinite(var)
        self.gp = None
        if ok.sum() < 3:
            return
        y, var = y[ok], var[ok]
        self.mean, self.scale = float(y.mean()), float(y.std()) or 1.0
        d = x.shape[1]
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * RBF(np.full(d, 0.5), (0.03, 30.0))
                  + WhiteKernel(1e-2, (1e-8, 1.0)))
        self.gp = GaussianProcessRegressor(kernel, alpha=var / self.scale**2 + 1e-10, n_restarts_optimizer=3,
                                           random_state=0)
        with warnings.catch_warnings():  # a bound reached is reported by the fit's quality, not a warning
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp.fit(x[ok], (y - self.mean) / self.scale)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) mean and (n,) variance at ``x`` ((n, D) unit-cube points)."""
        if self.gp is None:
            return np.full(len(x), np.nan), np.full(len(x), np.inf)
        m, s = self.gp.predict(x, return_std=True)
        return self.mean + self.scale * m, (self.scale * s) ** 2


def emulators(x: np.ndarray, stats: np.ndarray, variances: np.ndarray) -> list[Emulator]:
    """One emulator per target from (n, D) points, (n, T) statistics and variances."""
    return [Emulator(x, stats[:, j], variances[:, j]) for j in range(stats.shape[1])]


def implausibility(spec: CalibrationSpec, ems: list[Emulator], x: np.ndarray) -> np.ndarray:
    """(n,) the largest implausibility over the targets at (n, D) points (a target
    without an emulator counts 0)."""
    c = spec.method.cutoff
    worst = np.zeros(len(x))
    for em, t in zip(ems, spec.targets.values()):
        mu, var = em.predict(x)
        i = np.abs(mu - t.value) / np.sqrt(var + (t.tolerance / c) ** 2)
        worst = np.maximum(worst, np.where(np.isfinite(i), i, 0.0))
    return worst


def distance(spec: CalibrationSpec, stats: np.ndarray) -> np.ndarray:
    """(n,) each simulated point's largest |statistic - target| / tolerance (a point
    inside every tolerance has distance <= 1; a NaN statistic is infinitely far)."""
    z = np.array([t.value for t in spec.targets.values()])
    tol = np.array([t.tolerance for t in spec.targets.values()])
    d = np.abs(np.atleast_2d(stats) - z) / tol
    return np.where(np.isfinite(d), d, np.inf).max(axis=1)


@dataclass
class Wave:
    """What a wave's design needs from the waves before it: its candidates not ruled out."""

    candidates: int
    survivors: np.ndarray
    """(m, D) unit-cube candidates below the cutoff."""

    @property
    def fraction(self) -> float:
        return len(self.survivors) / self.candidates


def first_design(spec: CalibrationSpec) -> np.ndarray:
    """(points, D) a Latin hypercube over the priors."""
    seed = crng.derived_seed(spec.seed, STREAMS("design"), 1)
    return qmc.LatinHypercube(d=len(spec.parameters), seed=seed).random(spec.method.points)


def survivors(spec: CalibrationSpec, ems: list[Emulator], wave: int) -> Wave:
    """Candidates (uniform over the cube, seeded per wave) not ruled out by ``ems``."""
    rng = crng.generator(spec.seed, STREAMS("candidates"), wave)
    x = rng.random((spec.method.candidates, len(spec.parameters)))
    return Wave(len(x), x[implausibility(spec, ems, x) < spec.method.cutoff])


def next_design(spec: CalibrationSpec, alive: Wave, wave: int) -> np.ndarray:
    """(<= points, D) the next wave's design: candidates not ruled out, at random."""
    rng = crng.generator(spec.seed, STREAMS("design"), wave)
    n = min(spec.method.points, len(alive.survivors))
    return alive.survivors[np.sort(rng.choice(len(alive.survivors), n, replace=False))]


def design_frame(spec: CalibrationSpec, u: np.ndarray) -> pd.DataFrame:
    """A wave's design as a table: unit coordinates (``u_<key>``) and values (``<key>``)."""
    keys = list(spec.parameters)
    df = pd.DataFrame(u, columns=[f"u_{k}" for k in keys])
    values = pd.DataFrame(from_unit(spec, u), columns=keys)
    return pd.concat([values, df], axis=1)


def read_design(spec: CalibrationSpec, path: Path) -> np.ndarray:
    """(n, D) the unit coordinates of a stored design."""
    return pd.read_csv(path)[[f"u_{k}" for k in spec.parameters]].to_numpy()
