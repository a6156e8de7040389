"""Rules as data: behaviour rate = base rate x product of Hill modulators.

Each population's ``rules`` (config) maps a behaviour name to named modulators (objects
with ``signal``, ``direction``, ``low``, ``half_max``, ``hill_power``, ``max_effect`` and
``enabled``: the config's ``ModulatorConfig``). :class:`RuleSet` compiles them into small
parameter arrays, one row per *product* (a CAR T product's gene edits remove or change
named modulators; the other populations have a single product), and evaluates a
behaviour's factor for many cells at once from their signals. The defaults are the
table ``data/rules.csv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def hill(s, half_max, power, xp):
    """``s^n / (K^n + s^n)`` for s >= 0, elementwise (0 at s = 0)."""
    n = float(power) if isinstance(power, int | float) else None  # a host scalar, or (k,) per product
    if n is not None and n.is_integer() and 1 <= n <= 16:
        # (s/K)^n by repeated squaring: much cheaper than exp/log; s/K is capped so
        # that x^16 stays finite (H is then 1 to double precision anyway)
        x = xp.minimum(xp.maximum(s, 0.0) / half_max, 1e15)
        xn: Any = None
        base, k = x, int(n)
        while k:
            if k & 1:
                xn = base if xn is None else xn * base
            k >>= 1
            if k:
                base = base * base
        return xn / (1.0 + xn)
    # 1 / (1 + (K/s)^n), in logs so that tiny s or large n cannot overflow
    arg = power * (xp.log(half_max) - xp.log(xp.maximum(s, 1e-300)))
    return 1.0 / (1.0 + xp.exp(xp.minimum(arg, 700.0)))


def modulator_factor(s, up, low, half_max, power, effect, xp):
    """Factor of one modulator: ``1 + effect*H`` (up) or ``1 - effect*H`` (down), with
    ``H`` the Hill function of the signal (``1 - H`` where ``low``)."""
    h = hill(s, half_max, power, xp)
    h = xp.where(low, 1.0 - h, h)
    return xp.where(up, 1.0 + effect * h, 1.0 - effect * h)


def apply_edits(rules: dict, edits: list) -> dict:
    """Rules with gene edits applied: named modulators removed, or their keys changed.

    Args:
        rules: behaviour -> name -> modulator (pydantic models).
        edits: objects with ``remove`` (modulator names) and ``change`` (name -> keys
            to set); the config has checked that every changed modulator is valid.
    """
    out = {}
    for beh, mods in rules.items():
        kept = {}
        for name, mod in mods.items():
            if not mod.enabled or any(name in e.remove for e in edits):
                continue
            for e in edits:
                if name in e.change:
                    mod = mod.model_copy(update=e.change[name])
            kept[name] = mod
        out[beh] = kept
    return out


class RuleSet:
    """Compiled modulators of one population, per product.

    Args:
        per_product: one rules mapping (behaviour -> name -> modulator) per product,
            edits already applied.
        xp: numpy or cupy.
    """

    _KEYS = ("active", "up", "low", "half_max", "power", "effect")

    def __init__(self, per_product: list[dict], xp):
        self.xp = xp
        self.n_products = len(per_product)
        self._compiled: dict[str, list[tuple]] = {}
        self._max_factor: dict[str, float] = {}
        behaviours = sorted({b for r in per_product for b in r})
        for beh in behaviours:
            names = sorted({n for r in per_product for n in r.get(beh, {})})
            mods = []
            bound = 1.0
            for name in names:
                rows = [r.get(beh, {}).get(name) for r in per_product]
                signal = next(m.signal for m in rows if m is not None)
                if any(m is not None and m.signal != signal for m in rows):
                    raise ValueError(f"rules.{beh}.{name}: products disagree on the signal")
                params = np.array([
                    (1.0, m.direction == "up", m.low, m.half_max, m.hill_power, m.max_effect) if m is not None
                    else (0.0, 0.0, 0.0, 1.0, 1.0, 0.0) for m in rows
                ])  # (n_products, 6), host
                # per-product columns on the device (indexed by each cell's product), and the
                # first product's values as host floats: enough, with no per-cell gather, when
                # every product has the modulator alike (a single product, or products whose
                # edits leave it as it is)
                same = bool((params == params[0]).all() and params[0, 0] > 0)
                mods.append((name, signal, {k: xp.asarray(params[:, i]) for i, k in enumerate(self._KEYS)},
                             {k: float(params[0, i]) for i, k in enumerate(self._KEYS)}, same))
                bound *= float(np.max(np.where(params[:, 1] > 0, 1.0 + params[:, 5], 1.0)))
            self._compiled[beh] = mods
            self._max_factor[beh] = bound

    def signals_needed(self) -> set[str]:
        """Every signal any behaviour reads."""
        return {m[1] for mods in self._compiled.values() for m in mods}

    def max_factor(self, behaviour: str) -> float:
        """Upper bound of the behaviour's factor over all signals and products:
        ``prod(1 + max_effect)`` over its up modulators (down modulators are <= 1)."""
        return self._max_factor.get(behaviour, 1.0)

    def behaviour_signals(self, behaviour: str) -> list[str]:
        """The signals ``behaviour``'s modulators read."""
        return sorted({m[1] for m in self._compiled.get(behaviour, [])})

    def modulators(self, behaviour: str) -> list[str]:
        return [m[0] for m in self._compiled.get(behaviour, [])]

    def factor(self, behaviour: str, signals: dict, product=None, cache: dict | None = None):
        """(k,) product of the behaviour's modulator factors (the scalar 1.0 when the
        behaviour has none).

        Args:
            signals: signal name -> (k,) values for the cells evaluated.
            product: (k,) int product index per cell (None: product 0).
            cache: reuses Hill values of identical (signal, K, n) between behaviours
                evaluated on the same cells (modulators every product has alike).
        """
        xp = self.xp
        out = None
        for _name, sig, dev, host, same in self._compiled.get(behaviour, []):
            s = xp.asarray(signals[sig], dtype=xp.float64)
            if same:
                hkey = (sig, host["half_max"], host["power"])
                h = None if cache is None else cache.get(hkey)
                if h is None:
                    h = hill(s, host["half_max"], host["power"], xp)
                    if cache is not None:
                        cache[hkey] = h
                h = 1.0 - h if host["low"] else h
                f = 1.0 + host["effect"] * h if host["up"] else 1.0 - host["effect"] * h
            else:
                c = {key: v[product] for key, v in dev.items()}
                f = modulator_factor(s, c["up"] > 0, c["low"] > 0, c["half_max"], c["power"], c["effect"], xp)
                f = xp.where(c["active"] > 0, f, 1.0)
            out = f if out is None else out * f
        return 1.0 if out is None else out  # no modulators: the base rate holds for every cell
