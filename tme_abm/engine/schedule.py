"""The staged scheduler: the order things happen in one tick.

A tick is a fixed list of stages; each stage activates (population, action) pairs.
Where the order of populations matters within a stage (they compete for free sites),
the stage is marked ``shuffle`` and its populations are activated in a pseudo-random
order drawn from the counter-based RNG keyed by (tick, stage), so no population is
systematically first. The order does not depend on the seed: the replicates of a batch
step in lockstep, so they share it (docs/architecture.md, "The replicate axis").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from . import rng as crng

_STREAMS = crng.streams(0, "schedule", ("order",))  # sub-step: the stage


class Clock(Protocol):
    steps: int
    """Ticks done (the tick a stage's random order is drawn for)."""


@dataclass
class Stage:
    """One stage: a name, its (who, action) pairs, and whether to shuffle them."""

    name: str
    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    shuffle: bool = False


class StagedScheduler:
    """Runs ``stages`` in order, once per tick (a Mesa-style staged activation of
    population agents that hold arrays, instead of one object per cell)."""

    def __init__(self, model: Clock, stages: list[Stage]):
        self.model = model
        self.stages = stages
        self.seconds = {st.name: 0.0 for st in stages}
        """Wall seconds spent in each stage so far (for ``tme-abm bench model``)."""
        self.synchronize: Callable[[], None] | None = None
        """Called at the end of each stage when set (``bench model`` sets the backend's
        ``synchronize``), so a GPU stage's seconds include its device work, not only the
        launches; a run leaves it None and never waits for the device here."""

    def describe(self) -> list[str]:
        """Human-readable stage list, e.g. ``'movement [shuffled]: car_t.move, ...'``."""
        out = []
        for st in self.stages:
            who = ", ".join(name for name, _ in st.actions)
            out.append(f"{st.name}{' [shuffled]' if st.shuffle else ''}: {who}")
        return out

    def step(self) -> None:
        m = self.model
        for k, st in enumerate(self.stages):
            t0 = time.perf_counter()
            order = range(len(st.actions))
            if st.shuffle and len(st.actions) > 1:
                order = crng.permutation(m.steps, _STREAMS("order", k), len(st.actions))
            for i in order:
                st.actions[i][1]()
            if self.synchronize is not None:
                self.synchronize()
            self.seconds[st.name] += time.perf_counter() - t0
