"""The patient: a well-mixed systemic compartment coupled to the lattice.

The lattice is a representative piece of the disease; ``burden_scale`` tumor cells of
the patient stand for each of its tumor cells. The patient holds what the lattice does
not (docs/model.md, "Patient", gives every equation and the source or assumption
behind every parameter):

* **CAR T kinetics** (Stein 2019, Mueller 2017), one set of compartments per infused
  product: effectors in blood ``P``, in other tissues ``T`` (the distribution phase), in
  the disease ``D``, and memory cells ``M`` (the persistence phase). Effectors in the
  disease proliferate as often as CAR T on the lattice meet antigen (the engaged share
  of lattice CAR T); effectors in blood and tissues as often as they meet circulating
  antigen (normal antigen-positive cells, the antigen sink, and circulating tumor
  cells), a saturating function of antigen cells per effector. Proliferation slows as
  the effectors' mean generation nears the product's divisions (replicative capacity:
  expansion ends, contraction follows, even while antigen lasts). Lymphodepletion adds
  antigen-independent homeostatic proliferation. The disease takes CAR T from blood in
  proportion to its perfusion: the lattice's vessels x ``burden_scale``; the lattice
  itself receives CAR T at the blood concentration, as a sample of the disease.
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.linalg import expm

from ..engine import rng as crng

BLOOD, TISSUE, DISEASE, MEMORY = range(4)
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


@dataclass(frozen=True)
class Lesion:
    """What the lattice tells the patient over one tick, scaled to the patient
    (lattice counts x ``burden_scale``)."""

    burden: float = 0.0
    """Alive tumor cells of the disease (cells)."""
    kills_per_min: float = 0.0
    """Tumor cells killed by CAR T in the disease per minute."""
    encounter: float = 0.0
    """Share of the lattice's CAR T engaged with a target, in [0, 1] (0 without CAR T)."""


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
    disease_vessels: float = 0.0
    """Vessel sites of the disease: the lattice's x ``burden_scale``."""
    products: list[Product] = field(default_factory=list)
    cells: list[list[float]] = field(default_factory=list)
    """Per product: CAR T in blood, tissue, disease, memory (indices :data:`BLOOD` ... :data:`MEMORY`)."""
    generations: list[float] = field(default_factory=list)
    """Per product: antigen-driven divisions its effectors have made on average."""
    normal_antigen: float = 0.0
    """Normal antigen-positive cells S (the antigen sink)."""
    circulating_tumor: float = 0.0
    """Circulating tumor cells L."""
    lattice_burden: float = 0.0
    """Alive lattice tumor cells x burden_scale at the last update."""
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
    def for_patient(cls, cfg, seed: int, lattice_vessels: int) -> Systemic:
        """The patient of the replicate with ``seed``: its variability drawn from its own
        generator, the normal antigen-positive cells at their normal number."""
        z = crng.generator(seed, _STREAMS("variability")).standard_normal(2)
        v = cfg.variability
        return cls(cfg, disease_vessels=lattice_vessels * cfg.burden_scale, normal_antigen=cfg.normal_antigen_cells,
                   expansion_factor=math.exp(v.expansion * z[0]), cytokine_factor=math.exp(v.cytokine * z[1]))

    # ---- what the rest of the model reads ----------------------------------------

    @property
    def burden(self) -> float:
        """Total tumor burden: the disease the lattice stands for plus circulating cells."""
        return self.lattice_burden + self.circulating_tumor

    def circulating(self) -> np.ndarray:
        """(products,) CAR T in the circulation of each product: blood effectors and memory."""
        c = np.asarray(self.cells, dtype=float).reshape(-1, 4)
        return c[:, BLOOD] + c[:, MEMORY]

    @property
    def blood_total(self) -> float:
        """Circulating CAR T (cells): what a blood count measures."""
        return float(self.circulating().sum())

    def arrival_rate_per_vessel(self) -> float:
        """Expected CAR T arrivals per minute at one lattice vessel site: the blood
        concentration (cells/uL) x the extravasation volume x marrow homing."""
        c = self.cfg
        return self.blood_total / (c.blood_volume_ml * 1000.0) * c.extravasation_ul_per_min * c.marrow_homing

    def disease_entry_per_min(self) -> float:
        """Rate constant (1/min) at which blood CAR T enter the disease: the lattice's
        arrivals per blood cell x its vessels x ``burden_scale``."""
        c = self.cfg
        return c.extravasation_ul_per_min * c.marrow_homing * self.disease_vessels / (c.blood_volume_ml * 1000.0)

    def blood_encounter(self) -> float:
        """Share of blood and tissue effectors meeting antigen, ``Ag / (Ag + K (P + T))``
        with Ag = normal antigen-positive + circulating tumor cells (0 without antigen)."""
        ag = self.normal_antigen + self.circulating_tumor
        if ag <= 0:
            return 0.0
        c = np.asarray(self.cells, dtype=float).reshape(-1, 4)
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
        if self.first_infusion_min is None:
            self.first_infusion_min = minute
        return self.add_product(prod, dose)

    def add_product(self, product: Product, blood: float = 0.0) -> int:
        """Add a product with ``blood`` cells in blood; returns its index."""
        self.products.append(product)
        self.cells.append([float(blood), 0.0, 0.0, 0.0])
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

    def activated_car_t(self, blood_encounter: float, lesion_encounter: float) -> float:
        """Activated CAR T in the patient (cells): effectors meeting antigen, in blood and
        tissues (A_b (P + T)) and in the disease (phi D), that can still proliferate,
        weighted by their product's capacity left ``1 - n_p / N_p``. They make the
        GM-CSF and IFN-gamma that activate myeloid cells."""
        total = 0.0
        for p in range(len(self.products)):
            x = self.cells[p]
            total += self.capacity_left(p) * (blood_encounter * (x[BLOOD] + x[TISSUE]) + lesion_encounter * x[DISEASE])
        return total

    def kinetics_matrix(self, rho: float, blood_encounter: float, lesion_encounter: float) -> np.ndarray:
        """(4, 4) rate matrix K (1/min) of one product, ``dx/dt = K x`` over
        x = (blood, tissue, disease, memory), with proliferation ``rho`` (1/min) at full
        encounter and without homeostatic proliferation."""
        c = self.cfg
        g_b, g_d = rho * blood_encounter, rho * lesion_encounter
        either = 1.0 - (1.0 - blood_encounter) * (1.0 - lesion_encounter)
        k_out, k_in, k_d, k_egr = (c.distribution_out_per_min, c.distribution_in_per_min,
                                   self.disease_entry_per_min(), c.egress_per_min)
        die, mem, rec = c.contraction_per_min, c.memory_per_min, c.recall_per_min * either
        return np.array([
            [g_b - k_out - k_d - die - mem, k_in, k_egr, rec],
            [k_out, g_b - k_in - die - mem, 0.0, 0.0],
            [k_d, 0.0, g_d - k_egr - die - mem, 0.0],
            [mem, mem, mem, -c.memory_decay_per_min - rec],
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
        cells = np.asarray(self.cells, dtype=float).reshape(-1, 4)
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
        # CAR T: exact for constant coefficients; homeostatic proliferation is a scalar factor
        growth = math.exp(self.homeostatic_integral(t0_min, dt_min))
        for p in range(len(self.products)):
            rho = self.proliferation_per_min(p)
            k = self.kinetics_matrix(rho, a_blood, lesion.encounter)
            x = cells[p]
            effectors = x[BLOOD] + x[TISSUE] + x[DISEASE]
            if effectors > 0:  # the mean division rate of the effectors, held over the tick
                rate = rho * (a_blood * (x[BLOOD] + x[TISSUE]) + lesion.encounter * x[DISEASE]) / effectors
                self.generations[p] += rate * dt_min / math.log(2)
            self.cells[p] = [float(v) for v in growth * (expm(k * dt_min) @ x)]
        # CRS: stimulus -> myeloid activation (relaxes exactly) -> IL-6 (closed form)
        active = self.activated_car_t(a_blood, lesion.encounter)
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
