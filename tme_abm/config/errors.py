"""Config errors as messages fit for the user: the file, the dotted key path, the value
and what is allowed (with a did-you-mean hint for unknown keys)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration problem, with a message fit for the user."""


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per problem of ``exc``, raised validating ``root`` from ``source`` (a
    file name or "config")."""
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem{'s' * (exc.error_count() > 1)}):"]
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "config"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc) or []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"  {key}: unknown key"
            if hint:
                msg += f" (did you mean {'.'.join(str(p) for p in loc[:-1] + (hint[0],))}?)"
            if allowed:
                msg += f"; allowed keys here: {', '.join(allowed)}"
            lines.append(msg)
            continue
        text = err["msg"]
        if text.startswith("Value error, "):
            text = text[len("Value error, "):]
        if err["type"] in ("missing",):
            lines.append(f"  {key}: required key is missing")
        elif err["type"].startswith("model_") or err["type"] == "value_error":
            lines.append(f"  {key}: {text}")
        else:
            lines.append(f"  {key}: value {_short(value)} is not allowed: {text}")
    return "\n".join(lines)


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names allowed at the parent of ``loc`` by walking the schema from ``root``."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(part)
            if info is None:
                return None
            model = _unwrap(info.annotation)
        elif isinstance(model, tuple) and model[0] == "dict":
            model = model[1]
        else:
            return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def _unwrap(annotation):
    origin = typing.get_origin(annotation)
    if origin is dict:
        return ("dict", _unwrap(typing.get_args(annotation)[1]))
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(annotation):
            if a is not type(None):
                return _unwrap(a)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 80 else s[:77] + "..."
