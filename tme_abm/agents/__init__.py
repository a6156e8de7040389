"""The four cell populations, each one ``mesa.Agent`` holding struct-of-arrays state."""

from .car_t import CarTCells
from .myeloid import Granulocytes, Monocytes
from .population import Population
from .tumor import TumorCells

__all__ = ["CarTCells", "Granulocytes", "Monocytes", "Population", "TumorCells"]
