"""Checks of a valid config against the machine and the numerics: the memory a run
needs, the disk space its run file takes, and settings that run but are less accurate."""

from __future__ import annotations

import numpy as np

from ..engine.backend import work_per_tick
from .errors import ConfigError
from .schema import Config


def memory_estimate_bytes(cfg: Config, replicates: int = 1) -> int:
    """Bytes a run (or a batch of ``replicates``) needs for its lattice-sized arrays
    (fields, solver buffers, grids).

    Fields: two solver buffers per field; sources and summaries add about one more
    field-sized array; with a perfused field the sources cover every site (secretion
    and uptake, and the perfusion's own two, per field: four more) and the microvessel
    map adds 8 bytes per site; occupancy and masks add ~16 bytes per site. Cells are
    bounded by the number of sites (~64 bytes of state per cell).
    """
    n_sites = int(np.prod(cfg.lattice.shape))
    item = np.dtype(cfg.dtype).itemsize
    n_fields = len(cfg.enabled_fields)
    perfused = any(f.perfused for f in cfg.enabled_fields.values())
    per_field = 3 + (4 if perfused else 0)
    return replicates * n_sites * (n_fields * item * per_field + 16 + 64 + (8 if perfused else 0))


def output_estimate_bytes(cfg: Config, replicates: int = 1) -> int:
    """Bytes the run files of a run (or a batch of ``replicates``) reach, about: an upper
    bound for its field snapshots (stored compressed, counted uncompressed), its cell
    snapshots (at most one cell per site, 41 bytes each) and its two checkpoint slots,
    the time series at 64 columns in whole 1024-row chunks. The baseline of the tests
    (40 x 40, 3.5 days) writes 2.2 MB against an estimate of 2.6 MB."""
    n_sites = int(np.prod(cfg.lattice.shape))
    n_fields = len(cfg.enabled_fields)
    minutes = cfg.time.n_ticks * cfg.time.tick_min
    out = cfg.output
    rows = cfg.time.n_ticks // out.record_every_ticks + 2
    series = -(-rows // 1024) * 1024 * 8 * 64
    fields = (int(minutes / out.snapshot_every_min) + 2) * n_fields * n_sites * np.dtype(cfg.dtype).itemsize
    cells = (int(minutes / out.cell_snapshot_every_min) + 2) * n_sites * 41
    checkpoints = 2 * n_sites * (n_fields * 8 + 64)
    return replicates * (series + fields + cells + checkpoints + 2**16)


def run_work(cfg: Config, replicates: int = 1) -> float:
    """The work per tick of ``replicates`` replicates of ``cfg`` that ``backend: auto``
    weighs (:func:`tme_abm.engine.backend.work_per_tick`)."""
    return work_per_tick(int(np.prod(cfg.lattice.shape)), len(cfg.enabled_fields), replicates)


def check_memory(cfg: Config, available_bytes: int, where: str = "host memory", replicates: int = 1) -> None:
    """Refuse a lattice (times ``replicates``) that cannot fit, with the estimate in the message."""
    need = memory_estimate_bytes(cfg, replicates)
    if need > 0.8 * available_bytes:
        times = f"{replicates} replicates of " if replicates > 1 else ""
        raise ConfigError(
            f"{times}lattice.shape {cfg.lattice.shape} with {len(cfg.enabled_fields)} fields in {cfg.dtype} "
            f"needs about {need / 2**30:.2f} GiB, but only {available_bytes / 2**30:.2f} GiB of "
            f"{where} is available (at most 80% is used); use a smaller lattice"
            + (", fewer fields or float32" if cfg.dtype == "float64" else " or fewer fields")
        )


def accuracy_warnings(cfg: Config) -> list[str]:
    """Settings that run but are less accurate: fields stepped by LOD (fields.<name>.scheme)
    with cell uptake or vessels. The LOD splitting errs, in the 1D worst case, by 7.7% of
    the boundary value at uptake x field step = 6, 12% at 60, and 1.7% at 1.5
    (tests/test_diffusion.py); and it holds vessel voxels only to first order in
    D dt / dx^2 (tests/test_multigrid.py): one 12-min solve of the baseline's oxygen errs
    by 66% of its boundary value (tme-abm bench fields configs/baseline.yaml).
    The steady and implicit schemes have neither error."""
    out = []
    schemes = cfg.field_schemes
    for name, fc in cfg.enabled_fields.items():
        if schemes[name] != "lod":
            continue
        u_max = max(fc.uptake_per_min.values(), default=0.0)
        if u_max * cfg.field_dt_min > 6.0:
            out.append(
                f"fields.{name}: uptake {u_max}/min x field step {cfg.field_dt_min:g} min = "
                f"{u_max * cfg.field_dt_min:g} > 6 with scheme lod; the splitting error of cell uptake may reach "
                f"8-12% of the boundary value near consuming cells; scheme steady or implicit has no such error "
                f"(docs/architecture.md)"
            )
        r = fc.diffusion_um2_per_min * cfg.field_dt_min / cfg.lattice.spacing_um**2
        if fc.vessel_value is not None and r > 0.25 and cfg.lattice.vessels.layout != "none":
            out.append(
                f"fields.{name}: scheme lod holds vessel voxels only to first order in D dt/dx^2 = {r:.3g} > 0.25 "
                f"(at 2.5 the field errs by ~5%, at 25 by ~30% of the vessel value); scheme steady or implicit "
                f"holds them exactly (docs/architecture.md)"
            )
    return out
