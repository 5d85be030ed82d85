"""Pruning: the :class:`Pruner` base class and the built-in pruners."""

from typing import Any

from nnic.pruning.base import Pruner

_BUILTINS = {"LevelPruner": "nnic.builtins.level"}


def __getattr__(name: str) -> Any:
    # Lazy, because the built-in modules import this package's base class.
    if name in _BUILTINS:
        import importlib

        return getattr(importlib.import_module(_BUILTINS[name]), name)
    raise AttributeError(f"module 'nnic.pruning' has no attribute {name!r}")


__all__ = ["LevelPruner", "Pruner"]
