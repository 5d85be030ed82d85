"""Layer selection: which layers of a model a config_list picks, and the small counts selection relies on.

For each layer the *last* matching config_list entry wins, and a matching entry with ``exclude: True`` removes the
layer. The keys themselves are validated by :mod:`nnic.config` (the schema); this module applies them to a model.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from collections.abc import Iterable

import torch
from torch import nn

from nnic.config import _SELECTORS, DEFAULT_OP_TYPES, Key, _closest, _got, _where, validate_config_list
from nnic.masking import is_parametrized

__all__ = ["LayerConfig", "amount", "count_nonzero", "named_layers", "op_type", "replace_module", "select_layers"]


def count_nonzero(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.detach()))


def amount(fraction: float, n: int) -> int:
    """floor(fraction * n), computed on the decimal value the user wrote (0.29 * 100 is 29, not 28)."""
    return _amount(float(fraction), int(n))


@functools.lru_cache(maxsize=1024)
def _amount(fraction: float, n: int) -> int:
    # Cached: dependency-aware pruning asks once per grouped convolution block (a RegNet has hundreds), always
    # with the same few (fraction, n), and the exact Fraction arithmetic costs some 10 microseconds a call.
    return int(Fraction(repr(fraction)) * n)


@dataclass(frozen=True)
class LayerConfig:
    """A selected layer with the config_list entry that won for it.

    ``entry_index`` identifies the entry, so layers sharing a ``total_sparsity`` group share an ``entry_index``.
    ``config`` is this layer's own copy of the normalised entry.
    """

    name: str
    module: nn.Module = field(repr=False)
    entry_index: int
    config: dict[str, Any] = field(hash=False)


def op_type(module: nn.Module) -> str:
    """The class name ``op_types`` matches: the user's class, also once nnic has parametrized it.

    ``torch.nn.utils.parametrize`` swaps a masked or fake-quantized module's class for a generated subclass
    (``ParametrizedLinear``); a config_list written for the model must still see a ``Linear``.
    """
    cls = type(module)
    return cls.__bases__[0].__name__ if is_parametrized(module) else cls.__name__


def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the internals that parametrizations add (``x.parametrizations.weight``)."""
    return [(n, m) for n, m in model.named_modules() if "parametrizations" not in n.split(".")]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``model``'s submodule ``name`` (dotted, not the root) is.

    The one place that edits the module tree by name: speedup's shrink, quantization's lowering, sparsify's swap,
    export's stand-ins, loading a manifest and a recipe's rebuild all go through it."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _has_own_parameters(module: nn.Module) -> bool:
    return is_parametrized(module) or next(module.parameters(recurse=False), None) is not None


def _matches(entry: dict[str, Any], name: str, module: nn.Module) -> bool:
    if "op_types" in entry:
        types = set(entry["op_types"])
        if "default" in types:
            types.update(DEFAULT_OP_TYPES)
        if op_type(module) not in types:
            return False
    elif not _has_own_parameters(module):  # op_names/op_partial_names alone never select containers
        return False
    if "op_names" in entry and name not in entry["op_names"]:
        return False
    return "op_partial_names" not in entry or any(p in name for p in entry["op_partial_names"])


def _listing(modules: list[tuple[str, nn.Module]], limit: int = 12) -> str:
    layers = [f"{n or '<root>'} ({op_type(m)})" for n, m in modules if _has_own_parameters(m)]
    more = f", ... and {len(layers) - limit} more" if len(layers) > limit else ""
    return ", ".join(layers[:limit]) + more if layers else "none"


def _no_layer_error(index: int, entry: dict[str, Any], model: nn.Module,
                    modules: list[tuple[str, nn.Module]]) -> ValueError:
    selectors = ", ".join(f"{s}={entry[s]!r}" for s in _SELECTORS if s in entry)
    hints = []
    present = {op_type(m) for _, m in modules}
    for t in entry.get("op_types", ()):
        if t != "default" and t not in present:
            hints.append(f"no module of type {t!r}{_closest(t, present, ', {}')}")
    if "op_types" not in entry:
        by_name = dict(modules)
        hints += [f"{n!r} has no parameters of its own (name its layers, or give op_types)"
                  for n in entry.get("op_names", ()) if not _has_own_parameters(by_name[n])]
    hint = f" ({'; '.join(hints)})" if hints else ""
    return ValueError(f"{_where(index)} selects no layer of {type(model).__name__}: {selectors}{hint}; "
                      f"layers with parameters: {_listing(modules)}")


def select_layers(model: nn.Module, config_list: Any, kind: str, *, extra_keys: Iterable[Key] = (),
                  require_sparsity: bool = True) -> dict[str, LayerConfig]:
    """Validate ``config_list`` and return ``{qualified_name: LayerConfig}`` in ``model.named_modules()`` order.

    A layer is kept when the last entry matching it is not an ``exclude`` entry. Within an entry the given
    selectors are ANDed; without ``op_types`` only modules with parameters of their own are selected. Mistakes
    that would silently compress nothing are errors: an ``op_names`` name (or ``max_sparsity_per_layer`` key)
    that is not a module of the model, a non-exclude entry that matches no layer, and a config_list that selects
    no layer at all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {_got(model)}")
    entries = validate_config_list(config_list, kind, extra_keys=extra_keys, require_sparsity=require_sparsity)
    modules = named_layers(model)
    names = [n for n, _ in modules]
    known = set(names)
    winners: dict[str, int] = {}
    for index, entry in enumerate(entries):
        cap = entry.get("max_sparsity_per_layer")
        for key, listed in (("op_names", entry.get("op_names", ())),
                            ("max_sparsity_per_layer", cap if isinstance(cap, dict) else ())):
            for name in listed:
                if name not in known:
                    hint = _closest(name, names) or f" (layers with parameters: {_listing(modules)})"
                    raise ValueError(f"{_where(index, key)}: {name!r} is not a module of "
                                     f"{type(model).__name__}{hint}")
        matched = [n for n, m in modules if _matches(entry, n, m)]
        if not matched and not entry.get("exclude", False):
            raise _no_layer_error(index, entry, model, modules)
        for name in matched:
            winners[name] = index
    selected = {
        name: LayerConfig(name, module, winners[name], copy.deepcopy(entries[winners[name]]))
        for name, module in modules
        if name in winners and not entries[winners[name]].get("exclude", False)
    }
    if not selected:
        raise ValueError(f"config_list selects no layer of {type(model).__name__} (its exclude entries remove "
                         f"every layer it matches); layers with parameters: {_listing(modules)}")
    return selected
