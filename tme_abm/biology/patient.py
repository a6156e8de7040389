"""The patient: a well-mixed systemic compartment coupled to the lattice.

The lattice is a representative piece of the disease; ``burden_scale`` tumor cells of
the patient stand for each of its tumor cells. The patient holds what the lattice does
not (docs/model.md, "Patient", gives every equation and the source or assumption
behind every parameter):

* **CAR T kinetics** (Stein 2019, Mueller 2017), one set of compartments per infused
  product: effectors in blood ``P``, in other tissues ``T`` (the distribution phase) and
  memory cells ``M`` (the persistence phase). The CAR T in the disease are the lattice's
  (x ``burden_scale``; :mod:`~tme_abm.biology.coupling`): they enter from ``P`` as the
  lattice's arrivals (:meth:`Systemic.take`), return to ``P`` as its egress
  (:meth:`Systemic.give`), and expand and die there as the lattice's cells do. Effectors
  in blood and tissues proliferate as often as they meet circulating antigen (normal
  antigen-positive cells, the antigen sink, and circulating tumor cells), a saturating
  function of antigen cells per effector. Proliferation slows as the effectors' mean
  generation nears the product's divisions (replicative capacity: expansion ends,
  contraction follows, even while antigen lasts). Lymphodepletion adds
  antigen-independent homeostatic proliferation. Memory cells do not enter the disease:
  they return to blood as effectors when antigen is met (recall).
* **Blood compartment**: normal antigen-positive cells ``S`` (renewed, killed by
  engaged effectors) and circulating tumor cells ``L`` (following the marrow disease,
  killed by engaged effectors) for hematologic disease.
* **CRS** (Norelli 2018, Giavridis 2018, Liu 2020): the patient's myeloid cells are
  activated, reversibly, by activated CAR T (effectors meeting antigen that can still
  proliferate) and by tumor killing (DAMPs, pyroptosis),
  and activated myeloid cells make IL-6-like cytokine ``C``, which is cleared.
  Tocilizumab blocks its signalling, corticosteroids suppress activation and
  production. The effective signal sets fever, hypotension and hypoxia, graded by the
  ASTCT consensus (Lee 2019). Without CAR T nothing is activated: no CRS.

Over one tick the lattice's inputs and every coefficient are held at their tick-start
values, so each system is linear with constant coefficients and is integrated exactly:
the CAR T compartments by a matrix exponential (homeostatic proliferation acts on every
compartment alike, so its time course enters as a scalar factor in closed form), the
blood cells and myeloid activation as exponential relaxations, and the cytokine in
closed form over the activation's relaxation. Tests compare each with its closed form.
The CAR T integration carries two more states, the cells born and the cells dead over
the tick, so that the patient's ledger (:mod:`~tme_abm.biology.coupling`) is exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.linalg import expm

from ..engine import rng as crng
from .coupling import Lesion, new_ledger

BLOOD, TISSUE, MEMORY = range(3)
"""Indices of a product's compartments."""
PULSES = ("boost", "blockade", "suppression")
"""The :class:`Pulse` fields of a patient (checkpointed as dicts)."""
DRUGS = {"tocilizumab": "blockade", "corticosteroid": "suppression"}
"""The drugs against CRS and the :class:`Pulse` each sets: tocilizumab blocks IL-6
signalling, corticosteroids suppress myeloid activation and IL-6 production."""
_STREAMS = crng.streams(7, "patient", ("variability",))
"""A patient's variability is drawn from a generator of its own (no other setup draw
moves when the variability changes)."""


@dataclass
class Product:
    """One infused CAR T product: its config and its fitness at infusion."""

    edits: list[str]
    fitness: float
    """Multiplier of antigen-driven expansion, in (0, 1] (1: unaffected by inflammation)."""
    initial_exhaustion: float
    divisions: int


def _decay(tau_min: float, since_min: float, t_min: float) -> float:
    """``exp(-(t - since) / tau)`` for t >= since, else 0."""
    return math.exp(-(t_min - since_min) / tau_min) if t_min >= since_min else 0.0


@dataclass
class Pulse:
    """An effect of ``level`` at ``since_min`` that decays as ``exp(-(t - since) / tau)``
    (0 before it starts): a lymphodepletion's boost, a drug's effect."""

    level: float = 0.0
    since_min: float = 0.0
    tau_min: float = 1.0

    def at(self, t_min: float) -> float:
        return self.level * _decay(self.tau_min, self.since_min, t_min)

    def integral(self, t0_min: float, t1_min: float) -> float:
        """The integral over [t0, t1], in closed form."""
        lo = max(t0_min, self.since_min)
        if self.level <= 0 or t1_min <= lo:
            return 0.0
        return self.level * self.tau_min * (_decay(self.tau_min, self.since_min, lo)
                                            - _decay(self.tau_min, self.since_min, t1_min))


def _relax(x0: float, x_inf: float, rate: float, dt: float) -> float:
    """Exact solution of ``dx/dt = rate (x_inf - x)`` after dt."""
    return x_inf + (x0 - x_inf) * math.exp(-rate * dt) if rate > 0 else x0


@dataclass
class Systemic:
    """The systemic compartment of one patient. Units: cells, minutes, pg/mL-like."""

    cfg: Any
    """The ``patient`` config section (rates, thresholds; docs/config.md)."""
    products: list[Product] = field(default_factory=list)
    cells: list[list[float]] = field(default_factory=list)
    """Per product: CAR T in blood, tissue, memory (indices :data:`BLOOD`, :data:`TISSUE`,
    :data:`MEMORY`); those in the disease are the lattice's."""
    ledger: dict[str, float] = field(default_factory=new_ledger)
    """Every flow of cells between compartments so far (:mod:`~tme_abm.biology.coupling`)."""
    generations: list[float] = field(default_factory=list)
    """Per product: antigen-driven divisions its effectors have made on average."""
    normal_antigen: float = 0.0
    """Normal antigen-positive cells S (the antigen sink)."""
    circulating_tumor: float = 0.0
    """Circulating tumor cells L."""
    lattice_burden: float = 0.0
    """Tumor cells of the disease (the weights of the lattice's alive tumor agents) at the last update."""
    activation: float = 0.0
    """Share of the patient's monocytes/macrophages activated, in [0, 1]."""
    cytokine: float = 0.0
    """Systemic IL-6-like cytokine (pg/mL-like)."""
    baseline_burden: float | None = None
    inflammation: float = 0.0
    first_infusion_min: float | None = None
    boost: Pulse = field(default_factory=Pulse)
    """Lymphodepletion: homeostatic proliferation in units of ``homeostatic_per_min``."""
    blockade: Pulse = field(default_factory=Pulse)
    """Tocilizumab: share of IL-6 signalling blocked."""
    suppression: Pulse = field(default_factory=Pulse)
    """Corticosteroids: share of myeloid activation and IL-6 production suppressed."""
    crs_treated: bool = False
    """Tocilizumab or corticosteroids given: fever no longer needed to grade CRS (ASTCT)."""
    expansion_factor: float = 1.0
    """This patient's multiplier of antigen-driven expansion (variability)."""
    cytokine_factor: float = 1.0
    """This patient's multiplier of myeloid IL-6 production (variability)."""
    infused: float = 0.0
    time_min: float = 0.0
    """End of the last :meth:`advance`."""

    @classmethod
    def for_patient(cls, cfg, seed: int) -> Systemic:
        """The patient of the replicate with ``seed``: its variability drawn from its own
        generator, the normal antigen-positive cells at their normal number."""
        z = crng.generator(seed, _STREAMS("variability")).standard_normal(2)
        v = cfg.variability
        return cls(cfg, normal_antigen=cfg.normal_antigen_cells,
                   expansion_factor=math.exp(v.expansion * z[0]), cytokine_factor=math.exp(v.cytokine * z[1]))

    # ---- what the rest of the model reads ----------------------------------------

    @property
    def burden(self) -> float:
        """Total tumor burden: the disease the lattice stands for plus circulating cells."""
        return self.lattice_burden + self.circulating_tumor

    def circulating(self) -> np.ndarray:
        """(products,) CAR T in the circulation of each product: blood effectors and memory."""
        c = np.asarray(self.cells, dtype=float).reshape(-1, 3)
        return c[:, BLOOD] + c[:, MEMORY]

    @property
    def blood_total(self) -> float:
        """Circulating CAR T (cells): what a blood count measures."""
        return float(self.circulating().sum())

    def car_t_total(self) -> float:
        """CAR T in blood, tissues and memory, all products (cells; the disease's are the lattice's)."""
        return float(np.asarray(self.cells, dtype=float).sum())

    def effectors(self) -> np.ndarray:
        """(products,) blood effectors P of each product: the cells that can enter the disease."""
        return np.asarray(self.cells, dtype=float).reshape(-1, 3)[:, BLOOD]

    def arrival_rate_per_vessel(self) -> np.ndarray:
        """(products,) expected CAR T entering the disease per minute at one of the
        patient's vessel sites: each product's blood effector concentration (cells/uL) x
        the extravasation volume x marrow homing. A lattice vessel stands for s of them
        and a lattice CAR T for s cells, so agents arrive at a lattice vessel at this
        rate, each taking s effectors from blood (:meth:`take`)."""
        c = self.cfg
        return self.effectors() / (c.blood_volume_ml * 1000.0) * c.extravasation_ul_per_min * c.marrow_homing

    def take(self, product: int, cells: float) -> None:
        """Blood effectors of ``product`` entering the disease (the lattice's arrivals x s)."""
        if cells > self.cells[product][BLOOD] * (1 + 1e-12):
            raise ValueError(f"product {product}: {cells:g} cells cannot leave a blood pool of "
                             f"{self.cells[product][BLOOD]:g}")
        self.cells[product][BLOOD] = max(self.cells[product][BLOOD] - cells, 0.0)
        self.ledger["entered"] += cells

    def give(self, product: int, cells: float) -> None:
        """CAR T of ``product`` returning from the disease to blood (the lattice's egress x s)."""
        self.cells[product][BLOOD] += cells
        self.ledger["returned"] += cells

    def blood_encounter(self) -> float:
        """Share of blood and tissue effectors meeting antigen, ``Ag / (Ag + K (P + T))``
        with Ag = normal antigen-positive + circulating tumor cells (0 without antigen)."""
        ag = self.normal_antigen + self.circulating_tumor
        if ag <= 0:
            return 0.0
        c = np.asarray(self.cells, dtype=float).reshape(-1, 3)
        e = float(c[:, BLOOD].sum() + c[:, TISSUE].sum())
        return ag / (ag + self.cfg.encounter_half_ratio * e)

    def inflammation_index(self, burden: float, myeloid_per_tumor: float) -> float:
        """Pre-infusion inflammation in [0, 1]: a burden term ``B / (B + K_I)`` and a myeloid
        term ``m / (m + 0.1)`` (m = myeloid cells per tumor cell on the lattice), mixed by
        ``inflammation_myeloid_weight``."""
        w = self.cfg.inflammation_myeloid_weight
        b = burden / (burden + self.cfg.inflammation_half_burden)
        m = myeloid_per_tumor / (myeloid_per_tumor + 0.1)
        return (1 - w) * b + w * m

    # ---- events ------------------------------------------------------------------

    def start(self, lattice_burden: float) -> None:
        """Set the disease at the start of a run; circulating tumor cells at their equilibrium."""
        self.lattice_burden = lattice_burden
        self.circulating_tumor = self.cfg.circulating_tumor_fraction * lattice_burden

    def infuse(self, dose: float, edits: list[str], exhaustion: float, divisions: int, minute: float = 0.0) -> int:
        """Add a product to the blood; its fitness is set by the current inflammation
        index. Returns the product index."""
        loss = self.cfg.fitness_loss * self.inflammation
        prod = Product(edits=list(edits), fitness=1.0 - loss,
                       initial_exhaustion=min(1.0, exhaustion + loss),
                       divisions=max(0, int(round(divisions * (1.0 - loss)))))
        self.infused += dose
        self.ledger["infused"] += dose
        if self.first_infusion_min is None:
            self.first_infusion_min = minute
        return self.add_product(prod, dose)

    def add_product(self, product: Product, blood: float = 0.0) -> int:
        """Add a product with ``blood`` cells in blood; returns its index."""
        self.products.append(product)
        self.cells.append([float(blood), 0.0, 0.0])
        self.generations.append(0.0)
        return len(self.products) - 1

    def lymphodeplete(self, boost: float, minute: float, tau_min: float) -> None:
        self.boost = Pulse(boost, minute, tau_min)

    def give_drug(self, drug: str, effect: float, minute: float, tau_min: float) -> None:
        """A dose of a CRS drug (:data:`DRUGS`): its effect starts at ``effect`` at
        ``minute`` and decays with time constant ``tau_min``; fever is then no longer
        needed to grade CRS."""
        setattr(self, DRUGS[drug], Pulse(effect, minute, tau_min))
        self.crs_treated = True

    # ---- one tick ----------------------------------------------------------------

    def proliferation_per_min(self, p: int) -> float:
        """Antigen-driven proliferation of product p's effectors at full encounter:
        ``rho f_p omega_e (1 - n_p / N_p)``, slowing as the mean generation n_p nears the
        product's divisions N_p (replicative capacity; 0 once spent)."""
        prod = self.products[p]
        return self.cfg.expansion_per_min * prod.fitness * self.expansion_factor * self.capacity_left(p)

    def capacity_left(self, p: int) -> float:
        """``1 - n_p / N_p`` of product p, in [0, 1] (0 for a product with no divisions)."""
        prod = self.products[p]
        return max(1.0 - self.generations[p] / prod.divisions, 0.0) if prod.divisions > 0 else 0.0

    def activated_car_t(self, blood_encounter: float, lesion: Lesion) -> float:
        """Activated CAR T in the patient (cells): effectors meeting antigen in blood and
        tissues (A_b (P + T)), weighted by their product's capacity left
        ``1 - n_p / N_p``, and the disease's engaged CAR T that can still divide. They make
        the GM-CSF and IFN-gamma that activate myeloid cells."""
        total = lesion.activated
        for p in range(len(self.products)):
            x = self.cells[p]
            total += self.capacity_left(p) * blood_encounter * (x[BLOOD] + x[TISSUE])
        return total

    def kinetics_matrix(self, rho: float, blood_encounter: float, lesion_encounter: float,
                        homeostatic_per_min: float = 0.0) -> np.ndarray:
        """(5, 5) rate matrix K (1/min) of one product, ``dx/dt = K x`` over
        x = (blood, tissue, memory, born, dead): the three compartments, with
        proliferation ``rho`` (1/min) at full encounter and homeostatic proliferation
        ``homeostatic_per_min`` in every compartment, and the cells born and dead so far
        (rows that only accumulate)."""
        c = self.cfg
        g_b, h = rho * blood_encounter, homeostatic_per_min
        either = 1.0 - (1.0 - blood_encounter) * (1.0 - lesion_encounter)
        k_out, k_in = c.distribution_out_per_min, c.distribution_in_per_min
        die, mem, rec, decay = c.contraction_per_min, c.memory_per_min, c.recall_per_min * either, \
            c.memory_decay_per_min
        return np.array([
            [g_b + h - k_out - die - mem, k_in, rec, 0.0, 0.0],
            [k_out, g_b + h - k_in - die - mem, 0.0, 0.0, 0.0],
            [mem, mem, h - decay - rec, 0.0, 0.0],
            [g_b + h, g_b + h, h, 0.0, 0.0],
            [die, die, decay, 0.0, 0.0],
        ])

    def homeostatic_integral(self, t0_min: float, dt_min: float) -> float:
        """``integral of k_h b exp(-(t - t_LD)/tau) dt`` over the tick, in closed form."""
        return self.cfg.homeostatic_per_min * self.boost.integral(t0_min, t0_min + dt_min)

    def advance(self, t0_min: float, dt_min: float, lesion: Lesion) -> None:
        """Integrate over [t0, t0 + dt] with the lattice's ``lesion`` inputs and every
        coefficient held at their tick-start values."""
        c = self.cfg
        self.lattice_burden = lesion.burden
        a_blood = self.blood_encounter()
        cells = np.asarray(self.cells, dtype=float).reshape(-1, 3)
        engaged_blood = a_blood * float(cells[:, BLOOD].sum() + cells[:, TISSUE].sum())
        # blood cells: renewal / following the marrow, minus killing by engaged effectors
        ag = self.normal_antigen + self.circulating_tumor
        kill_hazard = c.blood_kills_per_min * engaged_blood / ag if ag > 0 else 0.0
        blood_kills = kill_hazard * ag
        r_s = c.normal_antigen_renewal_per_min
        rate = r_s + kill_hazard
        self.normal_antigen = _relax(self.normal_antigen, r_s * c.normal_antigen_cells / rate if rate > 0 else 0.0,
                                     rate, dt_min)
        k_x = c.circulating_exchange_per_min
        rate = k_x + kill_hazard
        target = k_x * c.circulating_tumor_fraction * lesion.burden / rate if rate > 0 else 0.0
        self.circulating_tumor = _relax(self.circulating_tumor, target, rate, dt_min)
        # CAR T: exact for constant coefficients; homeostatic proliferation acts on every
        # compartment alike, so its mean over the tick gives its exact growth factor
        h = self.homeostatic_integral(t0_min, dt_min) / dt_min
        for p in range(len(self.products)):
            rho = self.proliferation_per_min(p)
            x = cells[p]
            if not x.any():
                continue
            if x[BLOOD] + x[TISSUE] > 0:  # the mean division rate of the effectors, held over the tick
                self.generations[p] += rho * a_blood * dt_min / math.log(2)
            k = self.kinetics_matrix(rho, a_blood, lesion.encounter, h)
            y = expm(k * dt_min) @ np.concatenate([x, [0.0, 0.0]])
            self.cells[p] = [float(v) for v in y[:3]]
            self.ledger["blood_born"] += float(y[3])
            self.ledger["blood_died"] += float(y[4])
        # CRS: stimulus -> myeloid activation (relaxes exactly) -> IL-6 (closed form)
        active = self.activated_car_t(a_blood, lesion)
        kills = lesion.kills_per_min + blood_kills
        stim = 1.0 - (1.0 - active / (active + c.activation_half_car_t)) * \
            (1.0 - kills / (kills + c.activation_half_kills_per_min))
        keep = 1.0 - self.suppression.at(t0_min)
        on, off = c.activation_per_min * keep * stim, c.deactivation_per_min
        lam = on + off
        a0 = self.activation
        a_inf = on / lam if lam > 0 else a0
        self.activation = _relax(a0, a_inf, lam, dt_min)
        s = c.il6_per_min * self.cytokine_factor * keep
        self.cytokine = _cytokine(self.cytokine, s, a0, a_inf, lam, c.cytokine_clearance_per_min, dt_min)
        self.time_min = t0_min + dt_min

    def add_cytokine(self, amount: float) -> None:
        """A pulse of systemic cytokine (a surgical wound)."""
        self.cytokine += amount

    # ---- toxicity ----------------------------------------------------------------

    def effective_cytokine(self, cytokine: float | None = None, t_min: float | None = None) -> float:
        """IL-6 signalling: the cytokine x (1 - tocilizumab's blockade at t)."""
        cyt = self.cytokine if cytokine is None else cytokine
        t = self.time_min if t_min is None else t_min
        return cyt * (1.0 - self.blockade.at(t))

    def crs_grade(self, effective: float | None = None) -> int:
        """ASTCT grade 0-4 (Lee 2019) from the effective cytokine (default: now).

        Fever is needed unless CRS was treated (tocilizumab, corticosteroids mask it);
        the grade is then 1, or 2-4 by the worse of hypotension (fluids, one vasopressor,
        several) and hypoxia (low-flow, high-flow oxygen, positive pressure). No CRS
        before the first infusion: it is a toxicity of immune effector cells."""
        if self.first_infusion_min is None or self.time_min <= self.first_infusion_min:
            return 0
        g = self.cfg.crs
        c = self.effective_cytokine() if effective is None else effective
        organ = max(sum(c >= t for t in g.hypotension), sum(c >= t for t in g.hypoxia))
        if c < g.fever and not (self.crs_treated and organ):
            return 0
        return 1 + organ

    def grade_thresholds(self) -> list[float]:
        """Effective cytokine at which grades 1-4 begin in an untreated patient."""
        g = self.cfg.crs
        return [g.fever] + [min(a, b) for a, b in zip(g.hypotension, g.hypoxia)]

    def icans_score(self, cytokine_peak: float, car_t_peak: float) -> float:
        """ICANS risk in [0, 1): the mean of ``C/(C + K_C)`` at the cytokine peak and
        ``P/(P + K_P)`` at the blood CAR T peak."""
        c = self.cfg
        return 0.5 * (cytokine_peak / (cytokine_peak + c.icans_half_cytokine)
                      + car_t_peak / (car_t_peak + c.icans_half_car_t))

    # ---- checkpoints -------------------------------------------------------------

    def get_state(self) -> dict:
        """Every field but the config, JSON-able (floats round-trip exactly)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cfg", "products")}
        state.update({k: asdict(getattr(self, k)) for k in PULSES})
        state["cells"] = [[float(x) for x in row] for row in self.cells]  # copies, not the live lists
        state["generations"] = [float(x) for x in self.generations]
        state["products"] = [asdict(p) for p in self.products]
        return state

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            if k == "products":
                v = [Product(**p) for p in v]
            elif k == "cells":
                v = [[float(x) for x in row] for row in v]
            elif k == "generations":
                v = [float(x) for x in v]
            elif k in PULSES:
                v = Pulse(**v)
            setattr(self, k, v)


def _cytokine(c0: float, s: float, a0: float, a_inf: float, lam: float, k: float, dt: float) -> float:
    """Exact ``C(dt)`` of ``dC/dt = s a(t) - k C`` with ``a(t) = a_inf + (a0 - a_inf) e^(-lam t)``."""
    def phi(rate):  # integral of e^(-rate u) e^(-k (dt - u)) du over [0, dt]
        d = k - rate
        if abs(d) * dt < 1e-9:
            return dt * math.exp(-k * dt)
        return (math.exp(-rate * dt) - math.exp(-k * dt)) / d
    return c0 * math.exp(-k * dt) + s * a_inf * phi(0.0) + s * (a0 - a_inf) * phi(lam)
