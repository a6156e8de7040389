"""The four cell populations, each one ``mesa.Agent`` holding struct-of-arrays state,
and the vocabulary a config's rules may use."""

from .car_t import CarTCells
from .myeloid import Granulocytes, Monocytes
from .population import Population
from .tumor import TumorCells

POPULATIONS = (TumorCells, CarTCells, Monocytes, Granulocytes)
"""Every population class, in occupancy-code order."""
CELL_TYPES = tuple(p.kind for p in POPULATIONS)
BEHAVIOURS = {p.kind: p.behaviours for p in POPULATIONS}
"""Behaviours each population's rules may modulate (plus secrete_<field>, uptake_<field>)."""
STATE_SIGNALS = {p.kind: p.state_signals_named for p in POPULATIONS}
"""Cell-state signals a population's rules may use (car_t ``antigen``: the engaged target's)."""
CONTACT_TYPES = ("tumor", "car_t", "car_t_engaged", "monocyte", "granulocyte")
"""What ``contact:<type>`` signals count among a cell's Moore neighbours (car_t_engaged:
CAR T cells in an engagement)."""

__all__ = ["BEHAVIOURS", "CELL_TYPES", "CONTACT_TYPES", "POPULATIONS", "STATE_SIGNALS", "CarTCells", "Granulocytes",
           "Monocytes", "Population", "TumorCells"]
