"""Checking a pruned-model manifest before it touches a model: the trust boundary of ``load_pruned``.

A manifest is data from a file, so nothing in it is trusted: its structure is checked entry by entry (errors
name the module and key), a module is rebuilt only through a class that an installed speedup rule handles and
that has ``from_manifest`` (looked up by name among those classes; nothing named in the manifest is imported),
and a module of the original class may change only the shape attributes its rule declares (``shape_attrs``),
each an int between 1 and its current value: pruning only ever shrinks. Any other attribute must equal the
fresh model's, so a manifest cannot change a stride, an ``eps`` or a ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nnic.channels.propagate import RuleTable

FORMAT = "nnic.pruned/1"
# Class paths written by earlier versions of nnic, and where those classes live now.
_MOVED = {"nnic.speedup.mha:PrunedMultiheadAttention": "nnic.builtins.speedup_rules.attention:PrunedMultiheadAttention"}
_MISSING = object()


def check_structure(manifest: Any, where: str) -> dict[str, dict[str, Any]]:
    """The manifest's ``modules`` after checking every entry's keys and value types."""
    if not isinstance(manifest, Mapping) or manifest.get("format") != FORMAT:
        raise ValueError(f"load_pruned: {where} is not a {FORMAT} manifest")
    modules = manifest.get("modules")
    if not isinstance(modules, Mapping):
        raise ValueError(f"load_pruned: {where}['modules']: expected an object {{module name: entry}}, "
                         f"got {type(modules).__name__}")
    for name, entry in modules.items():
        at = f"{where}['modules'][{name!r}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"load_pruned: {at}: expected an object, got {type(entry).__name__}")
        for key, kind in (("class", str), ("attrs", Mapping), ("tensors", Mapping)):
            if not isinstance(entry.get(key), kind):
                raise ValueError(f"load_pruned: {at}[{key!r}]: expected {'a string' if kind is str else 'an object'}"
                                 f", got {type(entry.get(key)).__name__}")
        for tname, shape in entry["tensors"].items():
            if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                    for d in shape)):
                raise ValueError(f"load_pruned: {at}['tensors'][{tname!r}]: expected a list of sizes (ints >= 0), "
                                 f"got {shape!r}")
    return dict(modules)


def rebuildable_classes(rules: Iterable[Any]) -> list[type]:
    """The module classes speedup rules handle that can be rebuilt from a manifest."""
    table = rules if isinstance(rules, RuleTable) else RuleTable(rules)
    return [cls for cls in table.modules if hasattr(cls, "from_manifest")]


def rebuild(name: str, entry: Mapping[str, Any], old: nn.Module, allowed: Mapping[str, type]) -> nn.Module:
    """A module of the manifest's (allowed) class, built from its attrs, no larger than the one it replaces."""
    path = _MOVED.get(entry["class"], entry["class"])
    cls = allowed.get(path)
    if cls is None:
        raise ValueError(f"load_pruned: refusing to construct {entry['class']} for module {name!r}: only classes "
                         f"that an installed speedup rule handles and that have from_manifest(attrs) are rebuilt "
                         f"from a manifest ({', '.join(sorted(allowed)) or 'none installed'})")
    try:
        with torch.device("meta"):  # sizes first, without allocating anything
            probe = cls.from_manifest(dict(entry["attrs"]))
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"load_pruned: module {name!r}: {path} cannot be built from attrs "
                         f"{entry['attrs']!r}: {exc}") from exc
    size = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    limit = sum(t.numel() for t in (*old.parameters(), *old.buffers()))
    if size > limit:
        raise ValueError(f"load_pruned: module {name!r}: the manifest's {path} would hold {size} values, more than "
                         f"the {limit} of the module it replaces; a pruned module is never larger")
    return cls.from_manifest(dict(entry["attrs"]))


def apply_attrs(name: str, module: nn.Module, attrs: Mapping[str, Any], rule: Any) -> None:
    """Set the declared shape attributes; refuse any change to another attribute."""
    declared = tuple(getattr(rule, "shape_attrs", ()) or ())
    kind = type(module).__name__
    for key, value in attrs.items():
        current = getattr(module, key, _MISSING) if isinstance(key, str) else _MISSING
        if current is _MISSING:
            raise ValueError(f"load_pruned: module {name!r} ({kind}): the manifest sets attribute {key!r}, "
                             f"which the module does not have")
        if key in declared:
            if not (isinstance(value, int) and not isinstance(value, bool)) or not (
                    1 <= value <= (current if isinstance(current, int) else value)):
                raise ValueError(f"load_pruned: module {name!r} ({kind}): attrs[{key!r}]: expected an int in "
                                 f"[1, {current}], got {value!r}")
            setattr(module, key, value)
            continue
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if type(value) is not type(current) or value != current:
            allowed = ", ".join(declared) or "none"
            raise ValueError(f"load_pruned: module {name!r} ({kind}): the manifest changes attribute {key!r} from "
                             f"{current!r} to {value!r}; a manifest may change only the shape attributes its "
                             f"speedup rule declares ({allowed})")


def tensor_shape(name: str, module: nn.Module, tname: str, shape: list[int],
                 current: torch.Tensor | None) -> torch.Size | None:
    """The new shape for tensor ``tname``, checked: same rank, no dimension larger than now (``None``: unchanged)."""
    kind = type(module).__name__
    if current is None:
        if getattr(module, tname, _MISSING) is None and len(shape) == 1:  # a bias speedup added by folding
            sizes = [d for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) for d in t.shape]
            if shape[0] <= max(sizes, default=0):
                return torch.Size(shape)
        raise ValueError(f"load_pruned: module {name!r} ({kind}): the manifest lists tensor {tname!r} with shape "
                         f"{shape}, which the module does not hold")
    if list(current.shape) == shape:
        return None
    if len(shape) != current.ndim or any(d > c for d, c in zip(shape, current.shape)):
        raise ValueError(f"load_pruned: module {name!r} ({kind}): tensor {tname!r} has shape {list(current.shape)}; "
                         f"the manifest's {shape} is not a pruned version of it")
    return torch.Size(shape)
