"""A calibration's results: ``chosen.yaml`` (the chosen parameters, each target at the
chosen point over the confirmation's patients, and the provenance), ``report.md`` and
its figures; and adopting the chosen parameters as the defaults in
``biology/data/parameters.csv`` (docs/calibration.md, "Outputs")."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ...biology import defaults
from ..errors import SweepError
from .spec import CalibrationSpec

CHOSEN = "chosen.yaml"


def commit() -> str:
    """The git commit of this checkout of tme_abm (``unknown`` outside a checkout)."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(spec: CalibrationSpec, out: Path, chosen: dict, stats: np.ndarray, var: np.ndarray,
                 points: pd.DataFrame, final_fraction: float, fractions: list[float],
                 nonimplausible: list[dict], code: str) -> dict:
    """Write ``chosen.yaml``, ``report.md`` and ``figures/`` into ``out``; returns what
    ``chosen.yaml`` holds (``code``: the commit of the process that finished it; the
    declaration's is in ``calibration.yaml``)."""
    declared = yaml.safe_load((out / "calibration.yaml").read_text())
    spec_file = Path(declared["spec_file"])
    targets = {}
    for (name, t), s, v in zip(spec.targets.items(), stats, var):
        targets[name] = {"target": t.value, "tolerance": t.tolerance, "confirmed": float(s),
                         "standard_error": float(math.sqrt(v)) if np.isfinite(v) else None,
                         "within": bool(np.isfinite(s) and abs(s - t.value) <= t.tolerance), "source": t.source}
    doc = {
        "calibration": spec.name, "parameters": chosen, "targets": targets,
        "all_within": all(t["within"] for t in targets.values()),
        "confirm_replicates": spec.method.confirm_replicates,
        "non_implausible_fraction": {"after_each_wave": fractions + [final_fraction]},
        "provenance": {"spec_file": str(spec_file), "spec_sha256": _sha256(spec_file),
                       "declared_at": declared.get("declared_at"), "declared_commit": declared.get("declared_commit"),
                       "config": declared["config"], "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "commit": code,
                       "runs": int(len(points) * spec.method.replicates + spec.method.confirm_replicates)},
    }
    (out / CHOSEN).write_text(yaml.safe_dump(doc, sort_keys=False))
    figures = _figures(spec, out, chosen, points, nonimplausible)
    (out / "report.md").write_text(_markdown(spec, doc, points, figures))
    return doc


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _markdown(spec: CalibrationSpec, doc: dict, points: pd.DataFrame, figures: list[str]) -> str:
    lines = [f"# Calibration {spec.name}", "",
             f"History matching, {int(points['wave'].max())} waves, {len(points)} points x "
             f"{spec.method.replicates} patients, then the chosen point x {spec.method.confirm_replicates} patients. "
             f"Commit {doc['provenance']['commit']}; declared {doc['provenance']['declared_at']}.", "",
             "## Chosen parameters", "", "| parameter | value | prior | source of the range |", "|---|---|---|---|"]
    for k, v in doc["parameters"].items():
        p = spec.parameters[k]
        lines.append(f"| `{k}` | {v:.4g} | {p.low:g} - {p.high:g}{' (log)' if p.log else ''} | {p.source} |")
    lines += ["", "## Targets at the chosen point", "",
              "| target | statistic | value | tolerance | confirmed (SE) | within | source |",
              "|---|---|---|---|---|---|---|"]
    for name, r in doc["targets"].items():
        t = spec.targets[name]
        cond = f" = {t.equals}" if t.equals is not None else f" >= {t.at_least:g}" if t.at_least is not None else ""
        stat = t.statistic + (f" q={t.q:g}" if t.q else "") + (f" ({t.transform})" if t.transform != "none" else "")
        se = f" ({r['standard_error']:.3g})" if r["standard_error"] is not None else ""
        lines.append(f"| {name} | {stat} of {t.measure}{f' on day {t.day:g}' if t.day is not None else ''}{cond} | "
                     f"{t.value:g} | {t.tolerance:g} | {r['confirmed']:.4g}{se} | {'yes' if r['within'] else 'no'} "
                     f"| {t.source} |")
    frac = ", ".join(f"{f:.2%}" for f in doc["non_implausible_fraction"]["after_each_wave"])
    lines += ["", f"Share of the prior space not ruled out after each wave: {frac}.", ""]
    lines += [f"![{f}](figures/{f})" for f in figures]
    return "\n".join(lines) + "\n"


def _figures(spec: CalibrationSpec, out: Path, chosen: dict, points: pd.DataFrame,
             nonimplausible: list[dict]) -> list[str]:
    """The non-implausible region (pairs of parameters) and every wave's statistics
    against the targets."""
    import matplotlib  # noqa: PLC0415 - the report extra, needed only here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    keys = list(spec.parameters)
    d = len(keys)
    ni = pd.DataFrame(nonimplausible, columns=keys)
    fig, axes = plt.subplots(d, d, figsize=(2.6 * d, 2.6 * d), squeeze=False)
    for i, ky in enumerate(keys):
        for j, kx in enumerate(keys):
            ax = axes[i][j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                if len(ni):
                    ax.hist(ni[kx], bins=20, color="0.6")
                ax.axvline(chosen[kx], color="C3")
            else:
                ax.scatter(ni[kx], ni[ky], s=2, color="0.6", rasterized=True)
                ax.scatter(points[kx], points[ky], s=8, c=points["wave"], cmap="viridis")
                ax.scatter([chosen[kx]], [chosen[ky]], marker="*", s=120, color="C3")
                if spec.parameters[ky].log:
                    ax.set_yscale("log")
            if spec.parameters[kx].log:
                ax.set_xscale("log")
            if i == d - 1:
                ax.set_xlabel(kx.split(".")[-1], fontsize=8)
            if j == 0 and i > 0:
                ax.set_ylabel(ky.split(".")[-1], fontsize=8)
    fig.suptitle("not ruled out (grey), simulated points (by wave), chosen (star)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "nonimplausible.png", dpi=90)
    plt.close(fig)
    names = list(spec.targets)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        t = spec.targets[name]
        ax.axhspan(t.value - t.tolerance, t.value + t.tolerance, color="C2", alpha=0.25)
        ax.scatter(points["wave"] + np.linspace(-0.2, 0.2, len(points)), points[name], s=6, color="0.3")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("wave", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "targets.png", dpi=90)
    plt.close(fig)
    return ["nonimplausible.png", "targets.png"]


def adopt(out_dir, table: Path | None = None) -> list[str]:
    """Write a calibration's chosen parameters into ``parameters.csv`` as the defaults,
    each with its provenance as its source; refused unless every target was within its
    tolerance at the chosen point. Returns the keys written."""
    out = Path(out_dir)
    path = out / CHOSEN
    if not path.exists():
        raise SweepError(f"{out}: no {CHOSEN} (the calibration has not finished)")
    doc = yaml.safe_load(path.read_text())
    if not doc["all_within"]:
        missed = [k for k, t in doc["targets"].items() if not t["within"]]
        raise SweepError(f"{out}: not adopted: the chosen point misses {', '.join(missed)}; "
                         f"see {out / 'report.md'}")
    table = table or defaults.DATA / "parameters.csv"
    lines = table.read_text().splitlines(keepends=True)
    keys = [next(csv.reader([line]), [""])[0] for line in lines]
    missing = [k for k in doc["parameters"] if k not in keys]
    if missing:
        raise SweepError(f"{table}: has no row for {', '.join(missing)}")
    prov = doc["provenance"]
    source = (f"calibrated by {doc['calibration']} ({Path(prov['spec_file']).name}, sha256 "
              f"{str(prov['spec_sha256'])[:12]}; {prov['finished_at'][:10]}, commit {prov['commit']}; "
              f"docs/calibration.md)")
    for i, key in enumerate(keys):
        if key in doc["parameters"]:  # only these rows are rewritten: the others stay as written
            units = next(csv.reader([lines[i]]))[2]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow([key, f"{doc['parameters'][key]:.6g}", units, source])
            lines[i] = buf.getvalue()
    tmp = table.with_name(f".{table.name}.new")
    tmp.write_text("".join(lines))
    tmp.replace(table)
    defaults._parameters.cache_clear()
    return list(doc["parameters"])
