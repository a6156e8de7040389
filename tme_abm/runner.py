"""Run one config to one run file: build the model, step it, write output."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from .backend import make_backend
from .config import Config
from .io import RunWriter
from .model import TMEModel


def default_output_path(cfg: Config) -> Path:
    return Path(cfg.output.path) if cfg.output.path else Path("runs") / f"{cfg.name}.h5"


def run(cfg: Config, out: str | Path | None = None, *, overwrite: bool = False,
        quiet: bool = False) -> Path:
    """Run ``cfg`` to completion and return the run file's path.

    A failure records status "failed" and the error in the file before re-raising.
    """
    backend = make_backend(cfg.backend, cfg.dtype)
    path = Path(out) if out else default_output_path(cfg)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output file exists; choose another --out or pass --overwrite")
    model = TMEModel(cfg, backend=backend)
    writer = RunWriter(
        path, cfg.to_yaml(),
        {"seed": cfg.seed, "backend": backend.name, "device": backend.device, "dtype": cfg.dtype},
        overwrite=overwrite,
    )
    snap_every = max(1, round(cfg.output.snapshot_every_min / cfg.time.tick_min))
    n_ticks = cfg.time.n_ticks
    try:
        writer.append_row(model.current_row())
        writer.snapshot_fields(model.time_min, model.fields.names, model.fields.units,
                               backend.to_host(model.fields.values))
        n_events = 0
        show = not quiet and sys.stderr.isatty()
        t0 = time.perf_counter()
        with tqdm(total=n_ticks, disable=not show, unit="tick", desc=cfg.name) as bar:
            for tick in range(1, n_ticks + 1):
                model.step()
                if tick % cfg.output.record_every_ticks == 0 or tick == n_ticks:
                    row = model.current_row()
                    writer.append_row(row)
                    bar.set_postfix(day=f"{model.time_min / 1440:.2f}", tumor=int(row["tumor_alive"]),
                                    car_t=int(row["car_t_effector"] + row["car_t_exhausted"]))
                if len(model.event_log) != n_events:
                    n_events = len(model.event_log)
                    writer.write_events(model.event_log)
                if tick % snap_every == 0 or tick == n_ticks:
                    writer.snapshot_fields(model.time_min, model.fields.names, model.fields.units,
                                           backend.to_host(model.fields.values))
                bar.update(1)
        writer.f.attrs["wall_seconds"] = time.perf_counter() - t0
        writer.write_events(model.event_log)
        writer.write_outcomes(model.outcomes())
    except BaseException as exc:
        writer.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        model.fields.solver.close()
    writer.finish("complete")
    return path
