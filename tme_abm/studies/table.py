"""The outcomes table of a sweep folder (``outcomes.csv``): one row per task.

While a sweep runs, every finished task's row is appended (one line, flushed), so a
10,000-task sweep writes each row once instead of rewriting the table after every task.
A task run again (a rerun of the sweep) appends a newer row; readers keep the last row
of each (point, replicate), and the sweep rewrites the table once, deduplicated and
sorted, when it ends. A line cut short by a kill is ignored.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from ..biology.outcomes import OUTCOME_KEYS
from .errors import SweepError

TABLE = "outcomes.csv"
TASK_KEYS = ("point", "replicate", "seed")
RUN_KEYS = ("path", "ran", "status", "error", "task_seconds")


def table_columns(params: list[str]) -> list[str]:
    """Every column of a sweep's table, in order: the task, its parameters, the run, the
    run's outcomes and (failed tasks) a traceback."""
    return [*TASK_KEYS, *params, *RUN_KEYS, *OUTCOME_KEYS, "traceback"]


class TableAppender:
    """Appends task rows to ``out/outcomes.csv`` with the columns of :func:`table_columns`.
    A table with other columns (an older version) is rewritten once with these."""

    def __init__(self, out: Path, params: list[str]):
        self.path = Path(out) / TABLE
        self.columns = table_columns(params)
        if self.path.exists() and self._header() != self.columns:
            _write(self.path, read_table(out).reindex(columns=self.columns))
        new = not self.path.exists()
        self._fh = open(self.path, "a", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._write_line(self.columns)

    def _header(self) -> list[str]:
        with open(self.path, newline="") as fh:
            return next(csv.reader(fh), [])

    def _write_line(self, values) -> None:
        self._csv.writerow(values)
        self._fh.flush()

    def append(self, row: dict) -> None:
        """One task's row (keys not in the columns are refused)."""
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"outcome row has unknown columns {sorted(extra)}")
        self._write_line(["" if row.get(c) is None else row[c] for c in self.columns])

    def close(self) -> None:
        """Rewrite the table once: the last row of each task, sorted by task."""
        self._fh.close()
        _write(self.path, read_table(self.path.parent))


def read_table(out) -> pd.DataFrame:
    """The outcomes table of a sweep folder: the last row of each (point, replicate),
    sorted by task."""
    path = Path(out) / TABLE
    if not path.exists():
        raise SweepError(f"{path}: no outcomes table (has the sweep run?)")
    text = path.read_text()
    if text and not text.endswith("\n"):  # a row cut short by a kill
        text = text[: text.rfind("\n") + 1]
    df = pd.read_csv(io.StringIO(text))
    return df.drop_duplicates(["point", "replicate"], keep="last").sort_values(["point", "replicate"]) \
        .reset_index(drop=True)


def _write(path: Path, df: pd.DataFrame) -> None:
    """Replace ``path`` by ``df`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
