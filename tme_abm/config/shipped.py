"""The configs that ship with tme_abm (configs/ of a checkout, ``tme_abm/configs`` of a
wheel), found by name from any folder: ``tme-abm run quickstart``."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

FOLDER = "configs"


def config_dirs() -> list[Path]:
    """Where configs are looked up by name, in order: ``configs/`` under the working
    directory, in the installed package (a wheel ships them as ``tme_abm/configs``), and
    beside the package (a checkout or an editable install); each folder once."""
    package = Path(__file__).resolve().parents[1]
    dirs = [root / FOLDER for root in (Path.cwd(), package, package.parent)]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in {x.resolve() for x in out}:
            out.append(d)
    return out


def shipped_configs() -> dict[str, Path]:
    """Run configs by name (``NAME.yaml`` at the top of a config folder; the first folder
    that has a name wins)."""
    found: dict[str, Path] = {}
    for d in config_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def describe(path: Path) -> str:
    """A config's description: the comment lines at its top, joined."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(x for x in lines if x)


def find_config(text: str | Path) -> Path:
    """The config file ``text`` names: a file that exists, or a shipped config by name
    (``quickstart``), by file name (``quickstart.yaml``) or by its path in a checkout
    (``configs/quickstart.yaml``), looked up in :func:`config_dirs`."""
    p = Path(text)
    if p.exists() or p.is_absolute() or ".." in p.parts:
        return p
    rel = Path(*p.parts[1:]) if len(p.parts) > 1 and p.parts[0] == FOLDER else p
    for d in config_dirs():
        for candidate in (d / rel, d / f"{rel}.yaml"):
            if candidate.is_file():
                return candidate
    names = ", ".join(shipped_configs()) or "none"
    raise ConfigError(f"{text}: config file not found (neither a file here nor a shipped config; shipped: {names}; "
                      f"tme-abm configs describes them)")


def find_calibration(text: str | Path) -> Path:
    """A calibration spec: a file, or a shipped one by name (``heme_cd19``, in
    ``configs/calibration/``); ConfigError if neither."""
    p = Path(text)
    if p.exists() or p.is_absolute() or len(p.parts) > 1:
        return p
    return find_config(Path(FOLDER) / "calibration" / p.name)
