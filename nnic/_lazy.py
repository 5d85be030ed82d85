"""Module attributes imported on first access, so that ``import nnic`` stays cheap and import cycles stay away."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``table``: ``{attribute: "module"}`` (the module itself) or
    ``{attribute: "module:name"}`` (a name in it)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = table[name].partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module

    return __getattr__
