"""Reading configs: YAML files, dotted ``--set KEY=VALUE`` overrides and validation,
with errors that name the file or override, the key and the value."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ConfigError, format_validation_error
from .schema import Config


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: PyYAML reads ``1e8`` and ``1.0e8`` (no exponent sign)
    as strings, which a strict schema would refuse; here they are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice (YAML leaves it to the reader; PyYAML keeps
    the last silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in first:
            raise DuplicateKeyError(f"duplicate key {key!r} on lines {first[key]} and {line}")
        first[key] = line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML text (configs, specs, ``--set`` values, the config stored in run files)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE`` (VALUE read as YAML: numbers, lists, booleans, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. fields.oxygen.decay_per_min=0.2")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted key path")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value {raw!r} is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of the raw config dict with dotted ``KEY=VALUE`` overrides set. A
    numeric part indexes a list: ``therapy.1.dose_cells=2e8``."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    indices = f"indices 0 to {len(node) - 1}" if node else "no index"
                    raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])} is a list of {len(node)} "
                                      f"entr{'y' if len(node) == 1 else 'ies'} ({indices}); {part!r} is not one of "
                                      f"them")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])} is a value ({node!r}), not a section")
            if last:
                node[part] = value
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                if not isinstance(nxt, (dict, list)):
                    raise ConfigError(f"--set {item!r}: {where} is a value ({nxt!r}), not a section")
                node = nxt
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a config is YAML text)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror})") from None
    try:
        data = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{p}: {exc}; give each key once") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty; a config sets at least one key (docs/config.md lists them)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def validate_config(data: dict, source: str = "config", overrides: dict[str, str] | None = None) -> Config:
    """Validate a raw config mapping; raise ConfigError with readable messages (a problem
    with a key in ``overrides``, dotted key -> what the user typed, names it)."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, Config, overrides)) from None


def load_config(path: str | Path, overrides: list[str] | None = None, labels: list[str] | None = None) -> Config:
    """Load a YAML config file, apply dotted ``KEY=VALUE`` overrides, and validate it.

    Args:
        labels: what the user typed for each override ("--set KEY=VALUE", "--seed 3"),
            named in the error of a problem with its key; default "--set KEY=VALUE".
    """
    overrides = list(overrides or [])
    labels = labels or [f"--set {item}" for item in overrides]
    data = apply_overrides(read_yaml(path), overrides)
    by_key = {item.split("=", 1)[0].strip(): label for item, label in zip(overrides, labels)}
    return validate_config(data, str(path), by_key)


def resolve_config(config, seed: int | None = None, overrides: dict | None = None) -> Config:
    """A Config from a Config, a YAML path or a raw mapping (None: every default), with
    dotted ``overrides`` ({"car_t.initial_cells": 50}) and an optional seed applied."""
    items = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={_yaml_value(v)}" for k, v in (overrides or {}).items()]
    if seed is not None:
        items.append(f"seed={int(seed)}")
    if config is None:
        return validate_config(apply_overrides({}, items))
    if isinstance(config, Config):
        if not items:
            return config
        return validate_config(apply_overrides(config.model_dump(mode="json"), items))
    if isinstance(config, (str, Path)):
        return load_config(config, items)
    if isinstance(config, dict):
        return validate_config(apply_overrides(config, items))
    raise TypeError(f"config must be a Config, a path or a mapping, not {type(config).__name__}")


def _yaml_value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
