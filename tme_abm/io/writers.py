"""Output writers: each kind of output (time series, therapy events, field snapshots,
cell snapshots, checkpoints) is an object with its own schedule that writes the model's
state into the run file when it is due (docs/output.md).

The runner asks every writer after the initial state (tick 0) and after every tick, in
the order of :func:`output_writers`; the checkpoint comes last, so a checkpoint covers
everything written before it. A writer writes one replicate of the model (a single
run's only one, or one of a batch) into that replicate's run file.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import cell_table, get_state
from .runfile import RunFile


@dataclass(frozen=True)
class Every:
    """Due at tick 0 and every ``ticks`` ticks; at the last tick of the run always
    (``at_end``) or never (``at_end=False``: a checkpoint of a finished run is of no use)."""

    ticks: int
    at_end: bool = True

    @classmethod
    def minutes(cls, interval_min: float, tick_min: float, at_end: bool = True) -> Every:
        """Every ``interval_min`` minutes, rounded to whole ticks (at least one)."""
        return cls(max(1, round(interval_min / tick_min)), at_end)

    def due(self, tick: int, last: bool) -> bool:
        return self.at_end if last else tick % self.ticks == 0


class ScheduledWriter:
    """A writer of one kind of output of replicate ``replicate`` that is due on a
    schedule; subclasses write it."""

    def __init__(self, run_file: RunFile, schedule: Every, replicate: int = 0):
        self.run_file, self.schedule, self.replicate = run_file, schedule, replicate

    def due(self, model, last: bool) -> bool:
        return self.schedule.due(model.steps, last)

    def write(self, model) -> None:
        raise NotImplementedError


class TimeSeriesWriter(ScheduledWriter):
    """One time-series row (``model.current_rows()``) per due tick."""

    def __init__(self, run_file: RunFile, schedule: Every, field_units: dict[str, str], replicate: int = 0):
        super().__init__(run_file, schedule, replicate)
        self.field_units = field_units

    def write(self, model) -> None:
        self.run_file.append_row(model.current_rows()[self.replicate], self.field_units)


class FieldSnapshotWriter(ScheduledWriter):
    """Every field's values on the lattice."""

    def write(self, model) -> None:
        f = model.fields
        self.run_file.snapshot_fields(model.time_min, f.names, model.backend.to_host(f.values[:, self.replicate]))


class CellSnapshotWriter(ScheduledWriter):
    """Every cell's site, type and state."""

    def write(self, model) -> None:
        self.run_file.snapshot_cells(model.time_min, cell_table(model, self.replicate))


class Checkpointer(ScheduledWriter):
    """The model's complete state, for ``--resume``."""

    def write(self, model) -> None:
        self.run_file.write_checkpoint(*get_state(model, self.replicate))


class EventWriter:
    """The therapy events fired since the last write (due whenever the log has grown)."""

    def __init__(self, run_file: RunFile, replicate: int = 0):
        self.run_file, self.replicate = run_file, replicate
        self.written = run_file.n_events

    def due(self, model, last: bool) -> bool:
        return len(model.replicas[self.replicate].event_log) != self.written

    def write(self, model) -> None:
        log = model.replicas[self.replicate].event_log
        self.run_file.write_events(log)
        self.written = len(log)


def output_writers(cfg, run_file: RunFile, field_units: dict[str, str], replicate: int = 0) -> list:
    """The writers of replicate ``replicate``'s run file, configured by ``cfg.output``, in
    the order they write."""
    o, tick = cfg.output, cfg.time.tick_min
    return [
        TimeSeriesWriter(run_file, Every(o.record_every_ticks), field_units, replicate),
        EventWriter(run_file, replicate),
        FieldSnapshotWriter(run_file, Every.minutes(o.snapshot_every_min, tick), replicate),
        CellSnapshotWriter(run_file, Every.minutes(o.cell_snapshot_every_min, tick), replicate),
        Checkpointer(run_file, Every.minutes(o.checkpoint_every_min, tick, at_end=False), replicate),
    ]
