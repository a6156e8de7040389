"""Suppressive myeloid cells: monocytes (M-MDSC / TAM-like) and granulocytes (PMN-MDSC).

Both are recruited at vessel sites at ``recruit_per_vessel_per_min`` x ``recruit``
rules (their chemokine at the vessel: CCL2-like for monocytes, CXCL8-like for
granulocytes), walk up that chemokine's gradient, die at ``death_per_min`` (monocytes
~2.5 days, granulocytes a 19 h half-life), and suppress CAR T cells in contact (the
CAR T ``*_contact`` rules). Monocytes also produce adenosine (CD39/CD73), and become
activated by IFN-gamma-like cytokine and by engaged CAR T neighbours
(``activate_per_min`` x ``activate`` rules) and return to rest at
``deactivate_per_min``; activated monocytes secrete the IL-6-like cytokine (the
``cytokine`` field).
"""

from __future__ import annotations

from ...engine import rng as crng
from ...engine.moves import walk
from .population import Population

PURPOSES = ("recruit", "move", "activate", "death")
"""Random-number purposes of a myeloid population."""


class MyeloidCells(Population):
    """Shared behaviour of the two myeloid populations (columns: ``site``, ``id``,
    ``birth_min`` float64)."""

    columns = {"birth_min": ("float64", 0.0)}

    def recruit(self) -> None:
        sites = self.arrivals_at_vessels(self.params.recruit_per_vessel_per_min, "recruit", "recruit")
        self.add(sites, how="arrived", birth_min=self.xp.full(sites.shape, self.model.time_min))

    def move(self) -> None:
        mv = self.params.move
        walk(self, self.xp.arange(len(self)), mv.speed_um_per_min, mv.chemotaxis_field, mv.chemotaxis_bias,
             "move")

    def die(self) -> None:
        if len(self) == 0:
            return
        dead = self.xp.zeros(len(self), dtype=bool)
        dead[self.draw(self.xp.arange(len(self)), self.params.death_per_min, "death", "death")] = True
        self.remove(dead, how="died")


class Monocytes(MyeloidCells):
    """Monocytes; extra column ``activated`` int8 (1 while activated)."""

    kind = "monocyte"
    code = 3
    streams = crng.streams(code, kind, (*PURPOSES, "deactivate"))
    behaviours = ("recruit", "move", "activate", "deactivate", "death")
    columns = {"birth_min": ("float64", 0.0), "activated": ("int8", 0)}

    def activate(self) -> None:
        """Resting cells activate (rules: IFN-gamma, engaged CAR T neighbours); activated
        cells return to rest at ``deactivate_per_min`` (activation is reversible). Both
        draws see the tick-start states."""
        xp = self.xp
        act = self.data["activated"]
        rest, active = xp.flatnonzero(act == 0), xp.flatnonzero(act == 1)
        on = self.draw(rest, self.params.activate_per_min, "activate", "activate")
        off = self.draw(active, self.params.deactivate_per_min, "deactivate", "deactivate")
        act[on] = 1
        act[off] = 0

    def secretion_gate(self, field: str):
        if field == "cytokine":
            return self.data["activated"].astype(self.xp.float64)
        return 1.0

    def snapshot(self) -> dict:
        """State 0 resting, 1 activated."""
        out = super().snapshot()
        out["state"] = self.data["activated"]
        return out

    def counts(self) -> dict:
        return {"monocytes": self.model.count(self),
                "monocytes_activated": self.model.count(self, self.data["activated"] == 1)}


class Granulocytes(MyeloidCells):
    kind = "granulocyte"
    code = 4
    streams = crng.streams(code, kind, PURPOSES)
    behaviours = ("recruit", "move", "death")

    def counts(self) -> dict:
        return {"granulocytes": self.model.count(self)}
