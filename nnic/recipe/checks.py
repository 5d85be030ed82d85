"""Checks of one recipe value each, raising :class:`~nnic.recipe.errors.RecipeError` at the value's place
(``recipe.yaml: stages[2].lr: expected ...``); the schema and the stages use them alike."""

from __future__ import annotations

from typing import Any

from nnic.recipe.errors import Where


def check_keys(where: Where, mapping: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(mapping, dict):
        raise where.expected("a mapping", mapping)
    for key in mapping:
        if key not in allowed:
            raise where.key(str(key)).error(f"unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in mapping:
            raise where.key(key).error("missing (required)")
    return mapping


def check_int(where: Where, value: Any, lo: int | None = None, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo):
        raise where.expected(f"an int >= {lo}" if lo is not None else "an int", value)
    return value


def check_float(where: Where, value: Any, lo: float, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= lo or (hi is not None and value > hi):
        raise where.expected(f"a number in ({lo:g}, {hi:g}]" if hi is not None else f"a number > {lo:g}", value)
    return float(value)


def check_str(where: Where, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        raise where.expected(f"one of {', '.join(choices)}" if choices else "a non-empty string", value)
    return value


def check_callable_path(where: Where, value: Any) -> str:
    """``"package.module:attribute"``: checked for shape here, imported when the recipe runs."""
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise where.expected("'package.module:callable'", value)
    return value


def check_kwargs(where: Where, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise where.expected("a mapping of keyword arguments", value)
    return dict(value)
