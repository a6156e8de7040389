"""What the biology needs from the model that holds it: the interface the populations and
the therapy timeline are written against (``TMEModel`` provides it).

Populations and therapy events read the lattice, the fields, the occupancy grid, the
clock and the random-number keys, count cells per replicate, and reach the patient of
each replicate; nothing else of the model is theirs to use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..engine.backend import Array, Backend
from ..engine.lattice import Lattice

if TYPE_CHECKING:  # types only: these modules import this one
    from .fields import FieldSet
    from .patient import Systemic
    from .populations import CarTCells, Granulocytes, Monocytes, Population, TumorCells


PER_REPLICATE_RATES = ("tumor.doubling_days", "tumor.gompertz_per_min", "tumor.capacity_fold",
                       "tumor.carrying_capacity_cells", "tumor.marrow_normal_cells",
                       "car_t.kill_probability", "car_t.divide_probability", "car_t.engage_per_min",
                       "car_t.death_per_min", "car_t.exhaustion_per_engagement")
"""Lattice parameters each replicate of a batch may have its own value of (besides the
patient's): the disease's growth (its Gompertz rate and carrying capacity, per
replicate) and the CAR T cells' rates, which each cell reads as its replicate's value
(:meth:`~tme_abm.biology.populations.population.Population.rate`)."""


class Patient(Protocol):
    """A replicate's patient, as the biology sees it: its config (its own values of the
    per-replicate keys) and its systemic compartment."""

    config: Any
    systemic: Systemic


class Host(Protocol):
    """The model, as the populations and the therapy timeline see it.

    Attributes: the config (its ``patient.burden_scale`` is the sample's weight), the
    backend, lattice and fields; ``occupancy`` and ``engaged_map``
    ((n_sites,) int8: codes of the cells at each site, engaged CAR T); ``vessels_dev`` and
    ``vessel_keys`` ((k,) vessel sites and their random-number keys); ``capacity_dev``
    ((R,) carrying capacity of each replicate's niche) and ``gompertz_dev`` ((R,) its
    Gompertz rate, 1/min); the clock (``steps`` ticks done,
    ``time_min``, ``dt_min``); ``seeds`` (one per replicate) and ``replicas`` (each
    replicate's patient); the four populations.
    """

    config: Any
    backend: Backend
    lattice: Lattice
    fields: FieldSet
    occupancy: Array
    engaged_map: Array
    vessels_dev: Array
    vessel_keys: Array
    capacity_dev: Array
    gompertz_dev: Array
    seeds: tuple[int, ...]
    steps: int
    time_min: float
    dt_min: float
    replicates: int
    tumor: TumorCells
    car_t: CarTCells
    monocytes: Monocytes
    granulocytes: Granulocytes

    @property
    def replicas(self) -> Sequence[Patient]: ...

    def count(self, pop: Population, mask: Array | None = None, weights: Array | None = None) -> Array:
        """(R,) cells of ``pop`` per replicate (where ``mask``; or the sum of ``weights``)."""
        ...

    def weighted_count(self, pop: Population, weights: Array) -> Array:
        """(R,) float64 sum of ``weights`` over the cells of ``pop`` per replicate."""
        ...

    def host_counts(self, *counts: Array) -> np.ndarray:
        """(len(counts), R) host copy of (R,) device counts, in one copy."""
        ...

    def site_owner(self, pop: Population) -> Array:
        """(n_sites,) index into ``pop`` of the cell at each site, -1 elsewhere."""
        ...

    def sense_signal(self, name: str, sites: Array, cache: dict | None = None) -> Array:
        """(k,) values of a rule's signal (a field, ``contact:<type>``) at ``sites``."""
        ...

    def marrow_normal(self) -> np.ndarray:
        """(R,) normal marrow cells of each replicate's niche (host)."""
        ...

    def burden(self) -> np.ndarray:
        """(R,) tumor cells of each replicate's disease: the weights of its alive tumor agents (host)."""
        ...

    def myeloid_per_tumor(self) -> np.ndarray:
        """(R,) lattice myeloid cells per alive tumor cell (host)."""
        ...

    def update_products(self) -> None:
        """Recompile the CAR T rules after an infusion added a product."""
        ...
