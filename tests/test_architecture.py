"""The package's layers import one way only, and no module imports itself through others.

Layers, lowest first (docs/architecture.md): version, engine, biology, config, model,
io, studies, viz, then the entry points (cli, bench, the package __init__). A module may
import from its own layer and the layers below it, never from a layer above. Every
``import`` in every module counts, including those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tme_abm

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


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (read by type checkers only)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for stmt in node.body for n in ast.walk(stmt)}


def imports(module: str, type_only: bool = True) -> set[str]:
    """The tme_abm modules ``module`` imports (a name imported from a package counts as
    its submodule when there is one); ``type_only=False`` leaves out the imports made
    for type checkers only, which do not run."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
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
RUNTIME = {m: imports(m, type_only=False) for m in MODULES}
"""The graph without type-only imports: a Protocol may name the classes that implement
it (``biology/host.py``) without an import cycle at run time."""


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
        for t in sorted(RUNTIME[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(RUNTIME):
        if m not in state:
            visit(m, [m])
    assert cycles == []
    # the type-only imports are seen (and still held to the layers above)
    assert "tme_abm.biology.populations" in GRAPH["tme_abm.biology.host"] - RUNTIME["tme_abm.biology.host"]


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


ONLY_NUMPY = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in ("numpy", "tme_abm"):
            raise ImportError(f"{name} is not installed (blocked by the test)")

sys.meta_path.insert(0, Refuse())
import tme_abm
import tme_abm.engine.backend, tme_abm.engine.rng, tme_abm.engine.lattice, tme_abm.engine.moves
import tme_abm.engine.schedule
from tme_abm.engine.diffusion import DiffusionSolver, FieldGrid
s = DiffusionSolver(FieldGrid((8, 8), 20.0, [100.0, 1e4], [0.01, 0.1], [[[1.0, 1.0], [1.0, 1.0]]] * 2), 1.0,
                    initial=1.0, schemes=["lod", "steady"])
s.step()
assert s.mg.fused is None  # without Numba, the array code
print(tme_abm.__version__, sorted(m for m in ("mesa", "pydantic", "h5py", "scipy", "pandas") if m in sys.modules))
"""


def test_the_engine_imports_and_solves_with_numpy_alone():
    """``import tme_abm.engine...`` loads no third-party module but NumPy (the package's
    public names are imported lazily), so the solver can be used on its own (without
    Numba its multigrid runs the array code)."""
    out = subprocess.run([sys.executable, "-c", ONLY_NUMPY], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["[]"]


def test_public_names_resolve_lazily():
    assert set(tme_abm.__all__) >= {"TMEModel", "DiffusionSolver", "open_run", "__version__"}
    assert tme_abm.TMEModel.__name__ == "TMEModel" and tme_abm.open_runs.__module__ == "tme_abm.io.readers"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tme_abm.nothing  # noqa: B018
