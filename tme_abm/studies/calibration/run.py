"""``tme-abm calibrate SPEC``: the waves of a history matching, the chosen point's
confirmation with ``confirm_replicates`` patients, and the report, in one folder that a
rerun continues (docs/calibration.md)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ...engine import rng as crng
from ...io import open_run
from ...io.lock import LockedError, WriterLock
from ..errors import SweepError
from ..sweep import DesignConfig, Executor, SweepSpec, run_spec
from .matching import (
    design_frame,
    distance,
    emulators,
    first_design,
    from_unit,
    implausibility,
    next_design,
    read_design,
    survivors,
)
from .report import commit, write_report
from .spec import CalibrationSpec, load_calibration
from .targets import STREAMS, point_statistics, run_measures

DECLARED = "calibration.yaml"
POINTS = "points.csv"


def calibrate(spec_path, out_dir, executor: Executor = Executor()) -> dict:
    """Run (or continue) the calibration ``spec_path`` declares in ``out_dir``; returns
    the chosen point and its confirmation (what ``chosen.yaml`` holds). One calibration
    at a time runs in a folder: a second is refused."""
    spec, base = load_calibration(spec_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = WriterLock(out, "another calibration is running in this folder",
                          lock_name=".calibration.lock").acquire()
    except LockedError as exc:
        raise SweepError(str(exc)) from None
    try:
        _declare(spec, base, Path(spec_path), out)
        return _calibrate(spec, base, out, executor, commit())
    finally:
        lock.release()


def _declare(spec: CalibrationSpec, base: Path, path: Path, out: Path) -> None:
    """``calibration.yaml``: the spec as declared when the folder's first run started (its
    time, file and config); a different spec in the same folder is refused."""
    doc = {"spec": spec.model_dump(mode="json"), "spec_file": str(path.resolve()), "config": str(base)}
    target = out / DECLARED
    if target.exists():
        old = yaml.safe_load(target.read_text())
        if old["spec"] != doc["spec"]:
            raise SweepError(f"{out}: holds a different calibration ({DECLARED} differs); use another --out")
        return
    doc["declared_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["declared_commit"] = commit()
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


def wave_spec(spec: CalibrationSpec, name: str, seed_words: tuple[int, ...], points: list[dict],
              replicates: int) -> SweepSpec:
    """The sweep of one wave (or of the confirmation): the points, their replicates, the
    spec's overrides, and seeds of its own."""
    seed = crng.derived_seed(spec.seed, STREAMS("wave"), *seed_words)
    return SweepSpec(name=name, base="", set=copy.deepcopy(spec.set), seed=seed, replicates=replicates,
                     design=DesignConfig(kind="list", points=points))


def _statistics(spec: CalibrationSpec, folder: Path, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) statistics and variances of each point of a finished sweep."""
    failed = table[table["status"] != "complete"]
    if len(failed):
        raise SweepError(f"{folder}: {len(failed)} runs failed (outcomes.csv says why); run calibrate again to "
                         f"retry them")
    stats, var = [], []
    for point, rows in table.groupby("point", sort=True):
        measures = [run_measures(open_run(folder / p), spec) for p in rows["path"]]
        s, v = point_statistics(spec, measures, crng.derived_seed(spec.seed, STREAMS("bootstrap"), int(point)))
        stats.append(s)
        var.append(v)
    return np.array(stats), np.array(var)


def _calibrate(spec: CalibrationSpec, base: Path, out: Path, executor: Executor, code: str) -> dict:
    """The waves, the confirmation and the report; ``code``: the commit this process runs."""
    m = spec.method
    frames, xs, stats, variances, fractions = [], [], [], [], []
    for wave in range(1, m.waves + 1):
        folder = out / "waves" / f"w{wave:02d}"
        design_csv = folder / "design.csv"
        alive = None
        if wave > 1:  # the candidates the waves so far leave (the same again on a rerun)
            alive = survivors(spec, emulators(np.vstack(xs), np.vstack(stats), np.vstack(variances)), wave)
            fractions.append(alive.fraction)
            print(f"{spec.name}: after wave {wave - 1}, {alive.fraction:.2%} of the prior space is not ruled out",
                  flush=True)
            if len(alive.survivors) == 0:
                break
        if design_csv.exists():
            u = read_design(spec, design_csv)
        else:
            u = first_design(spec) if alive is None else next_design(spec, alive, wave)
            folder.mkdir(parents=True, exist_ok=True)
            design_frame(spec, u).to_csv(design_csv, index=False)
        design = pd.read_csv(design_csv)
        points = [{k: float(row[k]) for k in spec.parameters} for _, row in design.iterrows()]
        print(f"{spec.name}: wave {wave} of {m.waves}: {len(points)} points x {m.replicates} patients in {folder}",
              flush=True)
        table = run_spec(wave_spec(spec, f"{spec.name}_w{wave:02d}", (wave,), points, m.replicates), base, folder,
                         executor)
        s, v = _statistics(spec, folder, table)
        xs.append(u)
        stats.append(s)
        variances.append(v)
        frames.append(pd.concat([pd.DataFrame({"wave": wave, "point": range(len(u))}), design[list(spec.parameters)],
                                 pd.DataFrame(s, columns=list(spec.targets)),
                                 pd.DataFrame(v, columns=[f"var_{k}" for k in spec.targets])], axis=1))
    x_all, s_all, v_all = np.vstack(xs), np.vstack(stats), np.vstack(variances)
    ems = emulators(x_all, s_all, v_all)
    final = survivors(spec, ems, m.waves + 1)
    points_df = pd.concat(frames, ignore_index=True)
    points_df["distance"] = distance(spec, s_all)
    points_df["implausibility"] = implausibility(spec, ems, x_all)
    points_df.to_csv(out / POINTS, index=False)
    best = int(np.argmin(points_df["distance"].to_numpy()))
    chosen = {k: float(points_df[k].iloc[best]) for k in spec.parameters}
    folder = out / "confirm"
    print(f"{spec.name}: the chosen point x {m.confirm_replicates} patients in {folder}", flush=True)
    table = run_spec(wave_spec(spec, f"{spec.name}_confirm", (0, 1), [chosen], m.confirm_replicates), base, folder,
                     executor)
    c_stats, c_var = _statistics(spec, folder, table)
    region = from_unit(spec, final.survivors)
    pd.DataFrame(region).to_csv(out / "nonimplausible.csv", index=False)
    return write_report(spec, out, chosen, c_stats[0], c_var[0], points_df, final.fraction, fractions, region, code)
