"""The package's layers import one way only, and no module imports itself through others.

Layers, lowest first (docs/architecture.md): version, engine, biology, config, model,
io, studies, viz, then the entry points (cli, bench, the package __init__). A module may
import from its own layer and the layers below it, never from a layer above. Every
``import`` in every module counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tme_abm"
LAYERS = ["version", "engine", "biology", "config", "model", "io", "studies", "viz", "entry"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The layer of a tme_abm module (its first sub-package or module name)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS.index(top) if top in LAYERS else LAYERS.index("entry")


def imports(module: str) -> set[str]:
    """The tme_abm modules ``module`` imports (a name imported from a package counts as
    its submodule when there is one)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tme_abm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tme_abm":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_sits_in_a_layer_and_the_graph_is_read():
    assert {m.split(".")[1] for m in MODULES if "." in m} >= set(LAYERS[:-1])
    # a parser that found nothing would pass the checks below: the model must be seen
    # importing the biology and the engine, the runner the model
    assert "tme_abm.biology.populations" in GRAPH["tme_abm.model.model"]
    assert "tme_abm.engine.lattice" in GRAPH["tme_abm.model.model"]
    assert "tme_abm.model" in GRAPH["tme_abm.io.runner"]


def test_imports_point_down_the_layers_only():
    upward = sorted(f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
                    for m, targets in GRAPH.items() for t in targets if layer(t) > layer(m))
    assert upward == []


def test_the_engine_imports_nothing_of_tme_abm_outside_it():
    outside = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if m.startswith("tme_abm.engine")
                     for t in targets if not t.startswith("tme_abm.engine"))
    assert outside == []


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(GRAPH[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("source, expected", [
    ("from ...config import Config", {"tme_abm.config"}),
    ("from ..rules import RuleSet", {"tme_abm.biology.rules"}),
    ("from ...engine import rng", {"tme_abm.engine", "tme_abm.engine.rng"}),
    ("import tme_abm.io.readers", {"tme_abm.io.readers"}),
])
def test_relative_imports_are_resolved(tmp_path, monkeypatch, source, expected):
    """The checker itself: imports written in a module two levels down resolve to the
    modules they name (a wrong resolution would hide upward imports)."""
    fake = PACKAGE / "biology" / "populations" / "tumor.py"
    monkeypatch.setitem(MODULES, "tme_abm.biology.populations.tumor", tmp_path / "tumor.py")
    (tmp_path / "tumor.py").write_text(source + "\n")
    assert fake.exists()
    assert imports("tme_abm.biology.populations.tumor") == expected
