"""The top-level entry points: a pruner or quantizer looked up by its registry name, and the list of plugins.

``nnic.pruner``, ``nnic.quantizer`` and ``nnic.list_plugins`` are these functions; they live here, above the
pruning and quantization floors whose classes they return, so that ``nnic/__init__.py`` only hands names on.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nnic.plugins import get_registry
from nnic.pruning import Pruner
from nnic.quantization import Quantizer
from nnic.registry import PluginInfo

__all__ = ["list_plugins", "pruner", "quantizer"]


def list_plugins(kind: str | None = None) -> list[PluginInfo]:
    """Every registered pruner, quantizer and speedup rule (or those of one ``kind``), with their source."""
    return get_registry().list(kind)


def pruner(name: str, model: nn.Module, config_list: list[dict], **kwargs: Any) -> Pruner:
    """The pruner registered as ``name``, built on ``model`` with ``config_list``; see ``nnic.list_plugins()``."""
    return get_registry().get("pruner", name).obj(model, config_list, **kwargs)


def quantizer(name: str, model: nn.Module, config_list: list[dict], **kwargs: Any) -> Quantizer:
    """The quantizer registered as ``name``, built on ``model`` with ``config_list``."""
    return get_registry().get("quantizer", name).obj(model, config_list, **kwargs)
