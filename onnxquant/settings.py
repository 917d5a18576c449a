"""One type and range check for every setting, where recipes, job files and flags become settings.

TOML and JSON give values of any type: ``"false"`` is a string (and truthy), ``"Conv"`` where a
list belongs would be iterated per character, ``nan`` compares false with every bound. Each
settings dataclass field's annotation says what it takes; ``check_fields`` holds the values to it
before the dataclass is built, so range checks in ``__post_init__`` see the right types.
"""
from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from onnxquant.errors import UsageError

# Our files nest three levels at most; a deeper one is refused before it reaches a recursive parser.
MAX_DEPTH = 32


_NOUNS = {bool: ("true or false", "true/false values"), int: ("a whole number", "whole numbers"),
          float: ("a finite number", "finite numbers"), str: ("a string", "strings"), type(None): ("unset", "unset")}


def _name(hint: Any, plural: bool = False) -> str:
    """What ``hint`` takes, in words: "a list of strings", "a whole number or unset"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a, plural) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_name(args[0], True)}"
        return f"a list of {len(args)} {_name(args[0], True)}"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    noun = _NOUNS.get(hint)
    if noun is None:
        return getattr(hint, "__name__", str(hint))
    return noun[1] if plural else noun[0]


def check_value(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint``'s type (lists become tuples, ints become floats), or
    ValueError. Numbers must be finite."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_value(value, option)
            except ValueError:
                continue
        raise ValueError
    if origin is typing.Literal:
        if isinstance(value, str) and value in typing.get_args(hint):
            return value
        raise ValueError
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError
        return tuple(check_value(v, a) for v, a in zip(value, args))
    if hint is type(None):
        if value is None:
            return None
        raise ValueError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError
    if hint is str:
        if isinstance(value, str) and "\0" not in value:
            return value
        raise ValueError
    return value  # a type this module does not know: left to the dataclass


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(cls: type, values: dict[str, Any], label: str) -> dict[str, Any]:
    """``values`` for the dataclass ``cls``, each held to its field's annotation; a wrong type is
    a UsageError naming the key and what it takes."""
    hints = _hints(cls)
    checked = {}
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None:
            checked[key] = value
            continue
        try:
            checked[key] = check_value(value, hint)
        except ValueError:
            raise UsageError(f"{label}: {key} must be {_name(hint)}, got {_show(value)}") from None
    return checked


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed data, counted without recursion (stops past ``limit``)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_limited(text: str, parser: Callable[[str], Any], what: str) -> Any:
    """``parser(text)`` for a settings file, refusing nesting deeper than ``MAX_DEPTH`` (exit 2).

    Only brackets outside strings could nest; counting every bracket errs on the safe side, so
    a text with few brackets skips the count. RecursionError is caught as a last resort.
    """
    if text.count("[") + text.count("{") > MAX_DEPTH and _bracket_depth(text) > MAX_DEPTH:
        raise UsageError(f"{what}: nested more than {MAX_DEPTH} levels deep")
    try:
        data = parser(text)
    except RecursionError:
        raise UsageError(f"{what}: nested too deeply") from None
    if depth(data) > MAX_DEPTH:
        raise UsageError(f"{what}: nested more than {MAX_DEPTH} levels deep")
    return data


def _bracket_depth(text: str) -> int:
    level = deepest = 0
    quote = None
    escaped = False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest
