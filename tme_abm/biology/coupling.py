"""The patient and its sample: the one place where lattice counts become patient counts
(docs/model.md, "The patient and its sample").

The lattice is a weighted sample of the patient's disease. Its volume stands for
``patient.burden_scale`` (s) times its volume of the patient's disease: its vessels for
s times as many vessels, each monocyte and granulocyte on it for s cells. Each tumor
cell and each CAR T on it is a super-individual (Scheffer 1995) of ``weight`` patient
cells: a tumor agent holds s cells at the start, a CAR T agent the cells that arrived
together at its vessel (a Poisson number of mean s times one patient vessel's). Their
members die one by one (a binomial number per tick, the agent going with its last),
divide together (into a daughter agent of the same weight), and a CAR T agent meets at
most as many of its target's cells as it has. The disease and its CAR T are therefore
counted at real granularity whatever s: a lattice whose agents are thinned to a few
cells is a patient with a few cells left, and an empty lattice a patient with none.

One count. The patient's CAR T are its blood effectors P, tissue effectors T and memory
cells M (:class:`~tme_abm.biology.patient.Systemic`) plus the weights of the lattice's
CAR T, and nothing else: an arrival takes its cells from P, an agent that leaves gives
them back, a lattice division is its weight born in the disease, a death the members
lost. Every flow is written to the patient's ``ledger`` (patient cells, per
replicate), and :func:`car_t_balance` and :func:`tumor_balance` check that nothing is
made or lost between compartments:

    infused + placed + born (blood, lattice) = P + T + M + lattice weights + dead (blood, lattice)
    initial + born = alive (weights) + dead + removed

Flows recorded here (key: what it counts, real cells):

* CAR T: ``infused`` (infusions), ``placed`` (``car_t.initial_cells`` and the config's
  constant arrivals: cells from outside the patient's blood), ``blood_born`` and
  ``blood_died`` (the patient's kinetics), ``lattice_born`` and ``lattice_died``,
  ``entered`` (blood to the disease) and ``returned`` (disease to blood);
* tumor: ``tumor_initial``, ``tumor_born``, ``tumor_died`` (necrosis, apoptosis, CAR T
  and bystander killing, radiotherapy), ``tumor_removed`` (resection, MRD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAR_T_FLOWS = ("infused", "placed", "blood_born", "blood_died", "lattice_born", "lattice_died", "entered",
               "returned")
TUMOR_FLOWS = ("tumor_initial", "tumor_born", "tumor_died", "tumor_removed")
FLOWS = CAR_T_FLOWS + TUMOR_FLOWS
"""Every ledger entry (real cells, cumulative)."""


@dataclass(frozen=True)
class Lesion:
    """What the disease (the lattice) tells the patient over one tick, in patient cells
    (:func:`lesion`)."""

    burden: float = 0.0
    """Alive tumor cells of the disease (cells)."""
    kills_per_min: float = 0.0
    """Tumor cells killed by CAR T in the disease per minute."""
    encounter: float = 0.0
    """Share of the lattice's CAR T engaged with a target, in [0, 1] (0 without CAR T)."""
    activated: float = 0.0
    """CAR T in the disease engaged with a target that can still divide (cells)."""


def new_ledger() -> dict[str, float]:
    """An empty ledger: every flow at 0."""
    return {k: 0.0 for k in FLOWS}


def scale(model) -> float:
    """Patient cells per lattice CAR T, monocyte and granulocyte (and per tumor agent at
    the start): ``patient.burden_scale``."""
    return float(model.config.patient.burden_scale)


def record(model, flow: str, per_replicate) -> None:
    """Add ``per_replicate`` ((R,) real cells, host) to each replicate's ledger ``flow``."""
    for rep, v in zip(model.replicas, np.asarray(per_replicate, dtype=np.float64).reshape(-1)):
        rep.systemic.ledger[flow] += float(v)


def record_lattice(model, flow: str, cells) -> None:
    """Record lattice events of ``cells`` ((R,) patient cells, sums of weights; device or host)."""
    record(model, flow, np.asarray(model.backend.to_host(cells), dtype=np.float64))


def lattice_car_t(model) -> np.ndarray:
    """(R,) CAR T in each replicate's disease: the weights of the lattice's CAR T (host)."""
    c = model.car_t
    return model.host_counts(model.weighted_count(c, c.data["weight"]))[0]


def burden(model) -> np.ndarray:
    """(R,) tumor cells of each replicate's disease: the weights of its alive tumor
    agents (host; the patient adds circulating tumor cells)."""
    t = model.tumor
    return model.host_counts(model.count(t, weights=t.alive_weight()))[0].astype(np.float64)


def lesion(model, counts: np.ndarray, r: int) -> Lesion:
    """What replicate r's disease tells its patient over this tick, in patient cells.

    Args:
        counts: :meth:`TMEModel._patient_counts` of this tick ((6, R) patient cells:
            alive tumor, engaged CAR T, all CAR T, killed tumor, antigen-negative tumor,
            engaged CAR T with divisions left).
    """
    alive, engaged, car_t, killed, _neg, activated = counts[:, r].astype(np.float64)
    return Lesion(burden=alive, kills_per_min=killed / model.dt_min,
                  encounter=engaged / car_t if car_t > 0 else 0.0, activated=activated)


def car_t_balance(systemic, lattice_real: float) -> float:
    """What the CAR T ledger leaves unexplained (cells; 0 to rounding): every cell
    infused, placed or born minus those alive in blood, tissue, memory and the disease
    (``lattice_real``: the weights of the lattice's CAR T) and those dead."""
    g = systemic.ledger
    made = g["infused"] + g["placed"] + g["blood_born"] + g["lattice_born"]
    return made - systemic.car_t_total() - lattice_real - g["blood_died"] - g["lattice_died"]


def tumor_balance(systemic, alive_real: float) -> float:
    """What the tumor ledger of the disease leaves unexplained (cells; 0 to rounding)."""
    g = systemic.ledger
    return g["tumor_initial"] + g["tumor_born"] - alive_real - g["tumor_died"] - g["tumor_removed"]
