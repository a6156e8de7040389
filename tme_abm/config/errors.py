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


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel],
                            overrides: dict[str, str] | None = None) -> str:
    """One line per problem of ``exc``, raised validating ``root`` from ``source`` (a
    file name or "config").

    Args:
        overrides: dotted key -> how the user set it on the command line ("--set a.b=1",
            "--seed 3"); a problem with such a key (or under it, or naming it) says so.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc)
        problems.append(_problem(err, loc, key, err.get("input"), root) + _blame(key, err["msg"], overrides or {}))
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return "\n".join([f"{source}: invalid configuration ({len(problems)} problems):",
                      *(f"  {p}" for p in problems)])


def _blame(key: str, message: str, overrides: dict[str, str]) -> str:
    """" (from --set ...)" for a problem with a key the command line set."""

    def concerns(k: str) -> bool:
        if not key:  # a check of several keys: its message names them
            return k in message
        return key == k or key.startswith(k + ".") or k.startswith(key + ".")

    hits = [label for k, label in overrides.items() if concerns(k)]
    return f" (from {', '.join(hits)})" if hits else ""


def _problem(err: dict, loc: tuple, key: str, value, root: type[BaseModel]) -> str:
    """The line of one problem: the key, the value, what is wrong and what is allowed (a
    check of several keys names them in its message)."""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc) or []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"{key}: unknown key"
        if hint:
            msg += f" (did you mean {'.'.join(str(p) for p in loc[:-1] + (hint[0],))}?)"
        if allowed:
            msg += f"; allowed keys here: {', '.join(allowed)}"
        return msg
    text = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"].startswith("model_") or err["type"] == "value_error":
        if not key:
            return text
        # a check of a section that starts with one of its keys names it in full
        first = text.split(" ", 1)[0].rstrip(":")
        if first in (_allowed_keys(root, (*loc, "")) or []):
            return f"{key}.{text}"
        return f"{key}: {text}"
    return f"{key or 'config'}: value {_short(value)} is not allowed: {text}"


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
