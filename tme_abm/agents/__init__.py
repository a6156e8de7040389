"""Cell populations, each one ``mesa.Agent`` holding struct-of-arrays state."""

from .tumor import TumorCells

__all__ = ["TumorCells"]
