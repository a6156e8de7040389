"""The docs say what the code is: docs/config.md carries the reference generated from the
schema and a valid example, and every file path, config key and command (with its
options) that README.md and docs/*.md name in backticks or code blocks exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pydantic
import pytest
import typer

from tme_abm.cli import app
from tme_abm.config import load_yaml, validate_config
from tme_abm.config import schema as S
from tme_abm.config.reference import documented_table, reference_table

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {p.name: p.read_text() for p in DOCS}
CONFIG_MD = TEXT["config.md"]


def spans(text: str) -> list[str]:
    """Inline code spans and the lines of code blocks."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", rest) + [line for b in blocks for line in b.splitlines()]


ALL_SPANS = [(name, s) for name, text in TEXT.items() for s in spans(text)]


def test_config_md_holds_the_reference_generated_from_the_schema():
    assert documented_table(CONFIG_MD) == reference_table(), \
        "docs/config.md is out of date: paste the output of python -m tme_abm.config.reference"


def test_every_key_of_the_reference_says_what_it_is():
    rows = reference_table().splitlines()[3:-1]
    assert len(rows) > 150
    assert [r for r in rows if r.rstrip().endswith("|  |")] == []


def test_the_example_of_config_md_is_a_valid_config():
    example = re.search(r"## An example\n\n```yaml\n(.*?)```", CONFIG_MD, re.S).group(1)
    cfg = validate_config(load_yaml(example))
    assert cfg.name == "quickstart" and cfg.therapy and cfg.edits["my_edit"].remove == ["adenosine"]


# ---- paths ---------------------------------------------------------------------------

REPO_PATH = re.compile(r"^(?:tme_abm|configs|docs|tests|kernels|\.ci|engine|biology|config|model|io|studies|viz)"
                       r"(?:/[\w.-]+)*/?$")
"""A path into the repository (from its root or from the package)."""
SOURCE_FILE = re.compile(r"^[\w-]+\.(?:py|cu)$")
"""A source file named alone (``lod.py``): it must exist somewhere in the repository."""
ELSEWHERE = {"tme_abm/kernels/", "tme_abm/configs/"}
"""Paths of an installed wheel, not of a checkout."""


def _exists(path: str) -> bool:
    if SOURCE_FILE.match(path):
        return any(ROOT.glob(f"**/{path}"))
    return any((base / path).exists() for base in (ROOT, ROOT / "tme_abm"))


def test_every_file_path_the_docs_name_exists():
    named = {(doc, s) for doc, s in ALL_SPANS if (REPO_PATH.match(s) or SOURCE_FILE.match(s)) and s not in ELSEWHERE}
    assert len(named) > 40  # the patterns find the docs' paths
    assert sorted(f"{doc}: {s}" for doc, s in named if not _exists(s)) == []


# ---- config keys ---------------------------------------------------------------------

SECTIONS = {name for name, f in S.Config.model_fields.items()
            if isinstance(f.get_default(call_default_factory=True), pydantic.BaseModel | dict | list)}
KEY = re.compile(rf"^({'|'.join(sorted(SECTIONS))})(\.[A-Za-z_<>0-9]+)+$(?<!\.py)")
EVENTS = {k: cls for cls in (S.InfusionEvent, S.LymphodepletionEvent, S.ResectionEvent, S.RadiotherapyEvent,
                             S.MRDEvent, S.DrugEvent) for k in cls.model_fields["kind"].annotation.__args__}


def resolves(key: str) -> bool:
    """Whether a dotted key names a config key (``<name>``-style parts and the names of
    default fields, rules and edits stand for any entry)."""
    model, parts = S.Config, key.split(".")
    i = 0
    while i < len(parts):
        part = parts[i]
        fields = model.model_fields
        if part not in fields:
            return False
        ann = fields[part].annotation
        default = fields[part].get_default(call_default_factory=True) if not fields[part].is_required() else None
        i += 1
        if isinstance(default, pydantic.BaseModel):
            model = type(default)
        elif part in ("fields", "edits", "rules", "secretion_per_min", "uptake_per_min"):
            inner = {"fields": S.FieldConfig, "edits": S.EditConfig, "rules": S.ModulatorConfig}.get(part)
            depth = 2 if part == "rules" else 1  # the parts that name an entry (rules.<behaviour>.<modulator>)
            if len(parts) - i <= depth:  # the mapping itself, or an entry of it
                return True
            if inner is None:
                return False
            i += depth
            model = inner
        elif part == "therapy":
            if i < len(parts) and parts[i].isdigit():
                i += 1
            if i >= len(parts):
                return True
            if parts[i] in EVENTS:
                model, i = EVENTS[parts[i]], i + 1
            else:  # a key of some event
                return any(resolves_in(cls, parts[i:]) for cls in EVENTS.values())
        elif ann is not None and i < len(parts):
            return False
    return True


def resolves_in(model, parts: list[str]) -> bool:
    for j, part in enumerate(parts):
        if part not in model.model_fields:
            return False
        default = model.model_fields[part].get_default(call_default_factory=True)
        if isinstance(default, pydantic.BaseModel):
            model = type(default)
        elif j < len(parts) - 1:
            return False
    return True


@pytest.mark.parametrize("key, ok", [("patient.burden_scale", True), ("fields.oxygen.scheme", True),
                                     ("car_t.rules.kill.adenosine.half_max", True), ("therapy.0.day", True),
                                     ("patient.lattice_share", False), ("time.field_substep", False),
                                     ("fields.<name>.scheme", True), ("tumor.antigen.negative_fraction", True),
                                     ("tumor.rules", True), ("fields.oxygen", True), ("edits.a2ar_ko.remove", True)])
def test_the_key_checker_itself(key, ok):
    assert resolves(key) is ok


def test_every_config_key_the_docs_name_exists():
    named = {(doc, m.group(0)) for doc, s in ALL_SPANS for token in re.split(r"[\s=:,()]+", s)
             if (m := KEY.match(token.strip("`'\".")))}
    assert len(named) > 40
    assert sorted(f"{doc}: {key}" for doc, key in named if not resolves(key)) == []


# ---- commands ------------------------------------------------------------------------

CLICK = typer.main.get_command(app)


def _command(words: list[str]):
    """The click command ``tme-abm words...`` names, and the words after it."""
    cmd, rest = CLICK, words
    while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]} | {"--help"}


def test_every_command_and_option_the_docs_name_exists():
    uses = []
    for doc, s in ALL_SPANS:
        for m in re.finditer(r"tme-abm(?: [^`|;&)]*)?", s):
            try:
                words = shlex.split(m.group(0).replace("\\", ""))[1:]
            except ValueError:
                words = m.group(0).split()[1:]
            uses.append((doc, words))
    assert len(uses) > 30
    problems = []
    for doc, words in uses:
        cmd, rest = _command(words)
        if cmd is CLICK and rest and not rest[0].startswith("-") and rest[0] != "COMMAND":
            problems.append(f"{doc}: tme-abm {' '.join(words)}: no command {rest[0]!r}")
        for w in rest:
            option = w.split("=")[0]
            if re.match(r"^--?[a-z][a-z-]*$", option) and option not in _options(cmd) | _options(CLICK):
                problems.append(f"{doc}: tme-abm {' '.join(words)}: {cmd.name} has no option {option}")
    assert problems == []


def test_the_readme_command_table_lists_every_command_and_option():
    table = [line for line in TEXT["README.md"].splitlines() if line.startswith("| `tme-abm")]
    rows = {}
    for line in table:
        usage = line.split("`")[1]
        cmd, _ = _command(usage.split()[1:])
        rows.setdefault(cmd.name, []).append(line)

    def commands(group, prefix=""):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, f"{prefix}{name} ")
            else:
                yield cmd

    missing = []
    for cmd in commands(CLICK):
        text = " ".join(rows.get(cmd.name, []))
        if not text:
            missing.append(f"tme-abm ... {cmd.name}")
            continue
        missing += [f"{cmd.name} {opt}" for p in cmd.params for opt in p.opts
                    if opt.startswith("--") and opt not in ("--help",) and opt not in text]
    assert missing == []
