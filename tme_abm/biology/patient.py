"""The patient: a well-mixed systemic compartment coupled to the lattice.

State, per minute of simulated time (docs/model.md, "Patient", gives every equation
and the source or assumption behind every parameter):

* total tumor burden ``B = (alive tumor cells on the lattice) x burden_scale``;
* blood CAR T pool, one entry per infused product ``p``:
  ``dP_p/dt = (k_exp * f_p * A * (1 + boost(t)) - k_con - k_traf) * P_p`` with the
  antigen drive ``A = B / (B + K_B + P)`` (saturating in burden, and limited by the
  competition of P cells for antigen), the product's fitness
  ``f_p`` and the lymphodepletion boost ``boost(t) = b * exp(-(t - t_LD) / tau)``;
  the share ``lattice_share`` of the trafficking flux ``k_traf * P`` goes to the
  lattice: vessel sites release cells at that expected rate and each arrival is taken
  out of the pool, so infused = blood + arrived + elsewhere (with no expansion or
  contraction) holds exactly;
* systemic IL-6-like cytokine ``dC/dt = s_T * E + s_M * M - k_C * C`` with ``E`` and
  ``M`` the engaged CAR T and activated monocytes of the patient (lattice counts x
  burden_scale), plus pulses (surgical wounds).

Over one tick the inputs (B, E, M and the drive A) are held at their tick-start values, so both
equations are linear with known coefficients and are integrated exactly (the boost
term in closed form), not by an approximate stepper; tests compare with the analytic
solutions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Product:
    """One infused CAR T product: its config and its fitness at infusion."""

    edits: list[str]
    fitness: float
    """Multiplier of expansion, in (0, 1] (1: unaffected by patient inflammation)."""
    initial_exhaustion: float
    divisions: int


@dataclass
class Systemic:
    """The systemic compartment of one patient. Units: cells, minutes, pg/mL-like."""

    cfg: Any
    """The ``patient`` config section (rates, thresholds; docs/config.md)."""
    blood: list[float] = field(default_factory=list)
    """Blood CAR T per product (cells)."""
    products: list[Product] = field(default_factory=list)
    cytokine: float = 0.0
    burden: float = 0.0
    baseline_burden: float | None = None
    inflammation: float = 0.0
    boost: float = 0.0
    """Lymphodepletion boost b at ``boost_since_min`` (fraction of the base expansion)."""
    boost_since_min: float = 0.0
    boost_tau_min: float = 1.0
    # cumulative CAR T ledger (cells): infused = blood + to_lattice + elsewhere - expanded + contracted
    infused: float = 0.0
    expanded: float = 0.0
    contracted: float = 0.0
    to_lattice: float = 0.0
    from_lattice: float = 0.0
    elsewhere: float = 0.0

    @property
    def lattice_share(self) -> float:
        c = self.cfg
        return c.lattice_share if c.lattice_share is not None else min(1.0, 1.0 / c.burden_scale)

    @property
    def blood_total(self) -> float:
        return float(sum(self.blood))

    def antigen_drive(self, burden: float) -> float:
        """``A = B / (B + K_B + P)`` in [0, 1): rises and saturates with the burden B, and
        falls as the blood CAR T P outnumber their antigen (competition for antigen,
        which ends expansion once the pool is of the order of the burden)."""
        return burden / (burden + self.cfg.expansion_half_burden + self.blood_total)

    def inflammation_index(self, burden: float, myeloid_per_tumor: float) -> float:
        """Pre-infusion inflammation in [0, 1]: a burden term ``B / (B + K_I)`` and a myeloid
        term ``m / (m + 0.1)`` (m = myeloid cells per tumor cell on the lattice), mixed by
        ``inflammation_myeloid_weight``."""
        w = self.cfg.inflammation_myeloid_weight
        b = burden / (burden + self.cfg.inflammation_half_burden)
        m = myeloid_per_tumor / (myeloid_per_tumor + 0.1)
        return (1 - w) * b + w * m

    def infuse(self, dose: float, edits: list[str], exhaustion: float, divisions: int) -> int:
        """Add a product to the blood; its fitness is set by the current inflammation
        index. Returns the product index."""
        loss = self.cfg.fitness_loss * self.inflammation
        prod = Product(edits=list(edits), fitness=1.0 - loss,
                       initial_exhaustion=min(1.0, exhaustion + loss),
                       divisions=max(0, int(round(divisions * (1.0 - loss)))))
        self.products.append(prod)
        self.blood.append(float(dose))
        self.infused += dose
        return len(self.products) - 1

    def lattice_arrival_rate(self) -> float:
        """Expected CAR T arrivals on the lattice per minute: ``k_traf * share * P``."""
        return self.cfg.trafficking_per_min * self.lattice_share * self.blood_total

    def advance(self, t0_min: float, dt_min: float, engaged: float, activated_monocytes: float) -> None:
        """Integrate over [t0, t0 + dt] with the lattice inputs held fixed.

        The blood pool loses contraction and the trafficking to the rest of the body
        here; the lattice's share of trafficking leaves through :meth:`take`, cell by
        cell, as cells arrive at vessel sites.

        Args:
            engaged, activated_monocytes: patient totals (lattice counts x burden_scale).
        """
        c = self.cfg
        a = self.antigen_drive(self.burden)
        boost_int = 0.0  # integral of the boost over the step, in closed form
        if self.boost > 0:
            # from the boost's start (within this tick, at the lymphodepletion) to the tick's end
            lo = max(t0_min, self.boost_since_min)
            e0 = math.exp(-(lo - self.boost_since_min) / self.boost_tau_min)
            e1 = math.exp(-(t0_min + dt_min - self.boost_since_min) / self.boost_tau_min)
            boost_int = self.boost * self.boost_tau_min * max(e0 - e1, 0.0)
        k_else = c.trafficking_per_min * (1.0 - self.lattice_share)
        for p, prod in enumerate(self.products):
            P0 = self.blood[p]
            if P0 <= 0:
                continue
            k_exp = c.expansion_per_min * prod.fitness * a
            log_growth = (k_exp - c.contraction_per_min - k_else) * dt_min + k_exp * boost_int
            P1 = P0 * math.exp(log_growth)
            # the outflows' share of the change (the pool itself is exact); the ledger
            # closes by counting the rest as expansion
            integral = P0 * dt_min * (math.expm1(log_growth) / log_growth if abs(log_growth) > 1e-12 else 1.0)
            con, out = c.contraction_per_min * integral, k_else * integral
            self.contracted += con
            self.elsewhere += out
            self.expanded += (P1 - P0) + con + out
            self.blood[p] = P1
        s = c.cytokine_per_engaged_car_t * engaged + c.cytokine_per_activated_monocyte * activated_monocytes
        k = c.cytokine_clearance_per_min
        if k > 0:  # dC/dt = s - k C, exact over the step
            c_inf = s / k
            self.cytokine = c_inf + (self.cytokine - c_inf) * math.exp(-k * dt_min)
        else:
            self.cytokine += s * dt_min

    def take(self, per_product: list[int]) -> None:
        """Remove arriving cells from the blood (``per_product[p]`` of product p)."""
        for p, n in enumerate(per_product):
            n = min(float(n), self.blood[p])
            self.blood[p] -= n
            self.to_lattice += n

    def give_back(self, per_product: list[int]) -> None:
        """Cells leaving the lattice for the blood (``per_product[p]`` of product p)."""
        for p, n in enumerate(per_product):
            self.blood[p] += float(n)
            self.from_lattice += float(n)

    def get_state(self) -> dict:
        """Every field but the config, JSON-able (floats round-trip exactly)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cfg", "products")}
        state["blood"] = list(self.blood)
        state["products"] = [asdict(p) for p in self.products]
        return state

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            if k == "products":
                v = [Product(**p) for p in v]
            elif k == "blood":
                v = [float(x) for x in v]
            setattr(self, k, v)

    def ledger_residual(self) -> float:
        """``infused + expanded - contracted - elsewhere - to_lattice + from_lattice -
        blood``: zero up to rounding when the bookkeeping is right."""
        return (self.infused + self.expanded - self.contracted - self.elsewhere - self.to_lattice
                + self.from_lattice - self.blood_total)

    def crs_grade(self, cytokine: float | None = None) -> int:
        """CRS grade 0-4: the number of ``crs_thresholds`` the systemic cytokine reaches."""
        c = self.cytokine if cytokine is None else cytokine
        return int(sum(c >= t for t in self.cfg.crs_thresholds))

    def icans_score(self, cytokine_peak: float, car_t_peak: float) -> float:
        """ICANS risk in [0, 1): the mean of ``C/(C + K_C)`` at the cytokine peak and
        ``P/(P + K_P)`` at the blood CAR T peak."""
        c = self.cfg
        return 0.5 * (cytokine_peak / (cytokine_peak + c.icans_half_cytokine)
                      + car_t_peak / (car_t_peak + c.icans_half_car_t))
