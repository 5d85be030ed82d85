"""The search space of ``auto_compress``: per-group sparsity, per-layer weight bits, and the pruner itself.

The user describes it with a plain dict (every key optional)::

    space = {
        "pruners": ["l1norm", "fpgm"],      # structured pruners (speedup shrinks their result for real)
        "layers": None,                     # layer names to prune; default: every Linear/Conv2d but output layers
        "sparsity": (0.0, 0.8),             # (low, high) for every group, or {layer: (low, high)}
        "sparsity_step": 0.05,
        "bits": (4, 8, "float"),            # weight bits to choose from, or {layer: choices}; () = no quantization
    }

Layers whose output channels are coupled (a residual add, a grouped convolution) lose the same channels,
so with dependency-aware pruning they share one sparsity parameter, named after the group's first layer.
Layers that produce the model's output are not pruned (their channels are the model's outputs), but they can
be quantized. :class:`SearchSpace` is the resolved, JSON-storable form; :class:`Configuration` is one point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

FLOAT = "float"
_BITS = (4, 8, FLOAT)
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_QUANTIZABLE = (nn.Linear, nn.Conv2d)
_SPACE_KEYS = ("pruners", "layers", "sparsity", "sparsity_step", "bits")


@dataclass(frozen=True)
class Configuration:
    """One point of the space: the pruner, each pruned layer's sparsity and each layer's weight bits."""

    pruner: str
    sparsity: dict[str, float] = field(default_factory=dict)
    bits: dict[str, int | str] = field(default_factory=dict)

    def pruning_config_list(self) -> list[dict[str, Any]]:
        """The config list that ``nnic.pruner(self.pruner, model, ...)`` takes (layers at sparsity 0 left out)."""
        by_value: dict[float, list[str]] = {}
        for layer, s in self.sparsity.items():
            if s > 0:
                by_value.setdefault(s, []).append(layer)
        return [{"op_names": names, "sparsity": s} for s, names in sorted(by_value.items())]

    def quantization_bits(self) -> dict[str, int]:
        """``{layer: bits}`` for ``nnic.quantization_speedup`` (float layers left out)."""
        return {layer: int(b) for layer, b in self.bits.items() if b != FLOAT}

    def quantization_config_list(self) -> list[dict[str, Any]]:
        """The same bits as a quantizer config list (``naive`` format), for users who simulate before lowering."""
        by_bits: dict[int, list[str]] = {}
        for layer, b in self.quantization_bits().items():
            by_bits.setdefault(b, []).append(layer)
        return [{"op_names": names, "quant_types": ["weight"], "quant_bits": {"weight": b}}
                for b, names in sorted(by_bits.items())]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Configuration:
        return cls(str(d["pruner"]), {k: float(v) for k, v in d["sparsity"].items()},
                   {k: (v if v == FLOAT else int(v)) for k, v in d["bits"].items()})


@dataclass(frozen=True)
class SearchSpace:
    """The resolved space. ``groups``: ``{parameter name: layers it prunes}``; ``sparsity``: ``{parameter:
    (low, high)}``; ``bits``: ``{layer: choices}``; ``step``: the sparsity grid."""

    pruners: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    sparsity: dict[str, tuple[float, float]]
    bits: dict[str, tuple[int | str, ...]]
    step: float

    @property
    def size(self) -> int:
        """The number of free dimensions (0: nothing to search)."""
        free = [g for g, (lo, hi) in self.sparsity.items() if hi > lo]
        return len(free) + sum(len(c) > 1 for c in self.bits.values()) + (len(self.pruners) > 1)

    def suggest(self, trial: Any) -> Configuration:
        """Ask an Optuna trial for a configuration (parameters ``pruner``, ``sparsity:<group>``, ``bits:<layer>``)."""
        pruner = trial.suggest_categorical("pruner", list(self.pruners)) if len(self.pruners) > 1 else self.pruners[0]
        values = {}
        for group, (lo, hi) in self.sparsity.items():
            values[group] = trial.suggest_float(f"sparsity:{group}", lo, hi, step=self.step) if hi > lo else lo
        bits = {layer: (trial.suggest_categorical(f"bits:{layer}", list(c)) if len(c) > 1 else c[0])
                for layer, c in self.bits.items()}
        return self._configuration(pruner, values, bits)

    def from_params(self, params: Mapping[str, Any]) -> Configuration:
        """The configuration of a finished trial's parameters (fixed dimensions filled in)."""
        pruner = params.get("pruner", self.pruners[0])
        values = {g: float(params.get(f"sparsity:{g}", lo)) for g, (lo, hi) in self.sparsity.items()}
        bits = {layer: params.get(f"bits:{layer}", c[0]) for layer, c in self.bits.items()}
        return self._configuration(pruner, values, bits)

    def start_params(self, point: Any, where: str) -> dict[str, Any]:
        """Optuna parameters (for ``enqueue_trial``) of a start point: a number (every group at that sparsity,
        the highest-precision bits each layer allows, the first pruner) or a dict with any of ``"sparsity"`` (a
        number, or ``{group: number}``; groups left out get the lowest sparsity of their range), ``"bits"`` (a
        choice, or ``{layer: choice}``) and ``"pruner"``. Sparsities are clipped to each group's range and
        rounded to the grid; ``ValueError`` naming ``where`` for anything else."""
        if isinstance(point, (int, float)) and not isinstance(point, bool):
            point = {"sparsity": point}
        if not isinstance(point, Mapping) or set(point) - {"sparsity", "bits", "pruner"}:
            raise ValueError(f"{where}: expected a sparsity in [0, 1) or a dict with keys among 'sparsity', "
                             f"'bits', 'pruner', got {point!r}")
        params: dict[str, Any] = {}
        pruner = point.get("pruner", self.pruners[0])
        if pruner not in self.pruners:
            raise ValueError(f"{where}['pruner']: {pruner!r} is not among the searched pruners {list(self.pruners)}")
        if len(self.pruners) > 1:
            params["pruner"] = pruner
        sparsity = point.get("sparsity", {})
        per_group = sparsity if isinstance(sparsity, Mapping) else dict.fromkeys(self.sparsity, sparsity)
        for group, value in per_group.items():
            if group not in self.sparsity:
                raise ValueError(f"{where}['sparsity']: {group!r} is not a searched group {sorted(self.sparsity)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{where}['sparsity']: expected numbers in [0, 1), got {value!r}")
            lo, hi = self.sparsity[group]
            if hi > lo:
                steps = round((min(max(float(value), lo), hi) - lo) / self.step)
                params[f"sparsity:{group}"] = round(min(lo + steps * self.step, hi), 6)
        bits = point.get("bits", {})
        per_layer = bits if isinstance(bits, Mapping) else dict.fromkeys(self.bits, bits)
        for layer in per_layer:
            if layer not in self.bits:
                raise ValueError(f"{where}['bits']: {layer!r} is not a layer with a choice of bits")
        for layer, choices in self.bits.items():
            value = per_layer.get(layer, max(choices, key=lambda b: math.inf if b == FLOAT else b))
            if value not in choices:
                raise ValueError(f"{where}['bits']: {value!r} is not among {layer!r}'s choices {list(choices)}")
            if len(choices) > 1:
                params[f"bits:{layer}"] = value
        return params

    def most_compressed(self) -> Configuration:
        """Every group at its highest sparsity, every layer at its fewest bits: the cheapest point."""
        lowest = {layer: min(c, key=lambda b: math.inf if b == FLOAT else b) for layer, c in self.bits.items()}
        return self._configuration(self.pruners[0], {g: hi for g, (_, hi) in self.sparsity.items()}, lowest)

    def _configuration(self, pruner: str, values: Mapping[str, float], bits: Mapping[str, Any]) -> Configuration:
        per_layer = {layer: round(float(values[g]), 6) for g, layers in self.groups.items() for layer in layers}
        return Configuration(pruner, per_layer, dict(bits))

    def to_dict(self) -> dict[str, Any]:
        return {"pruners": list(self.pruners), "groups": {g: list(v) for g, v in self.groups.items()},
                "sparsity": {g: list(v) for g, v in self.sparsity.items()},
                "bits": {k: list(v) for k, v in self.bits.items()}, "step": self.step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        return cls(tuple(d["pruners"]), {g: tuple(v) for g, v in d["groups"].items()},
                   {g: (float(v[0]), float(v[1])) for g, v in d["sparsity"].items()},
                   {k: tuple(v) for k, v in d["bits"].items()}, float(d["step"]))


def output_layers(model: nn.Module, dummy_input: Any) -> set[str]:
    """Layers whose output tensor is (a view of) one of the model's outputs: pruning them would drop outputs."""
    from nnic.channels.capture import split_dummy_input

    produced: dict[str, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: produced.__setitem__(name, o))
             for name, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    args, kwargs = split_dummy_input(model, dummy_input)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    outputs = [t for t in _tensors(out)]
    storages = {t.untyped_storage().data_ptr() for t in outputs}
    return {name for name, o in produced.items() if isinstance(o, torch.Tensor)
            and o.untyped_storage().data_ptr() in storages}


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return [t for v in getattr(obj, "__dict__", {}).values() for t in _tensors(v)]


def _range(where: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (float(value), float(value))
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] <= value[1] < 1):
        raise ValueError(f"{where}: expected (low, high) with 0 <= low <= high < 1, got {value!r}")
    return float(value[0]), float(value[1])


def _choices(where: str, value: Any) -> tuple[int | str, ...]:
    if isinstance(value, (str, int)):
        value = (value,)
    if not isinstance(value, Sequence) or any(v not in _BITS or isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: expected a list of bits among 4, 8 and 'float', got {value!r}")
    return tuple(dict.fromkeys(value)) or (FLOAT,)


def _lowerable(name: str, module: nn.Module, choices: tuple[int | str, ...], *, strict: bool) -> tuple[int | str, ...]:
    """The ``choices`` that ``nnic.quantization_speedup`` can lower this layer to (tried on a copy): a layer
    with no low-bit module (a grouped convolution, say) keeps float. ``strict``: the user named the layer, so a
    choice that cannot be lowered is a ``ValueError`` with the reason."""
    import copy

    import nnic

    kept = []
    for bits in choices:
        if bits == FLOAT:
            kept.append(bits)
            continue
        holder = nn.Module()
        holder.add_module("layer", copy.deepcopy(module))
        try:
            nnic.quantization_speedup(holder, {"layer": int(bits)})
        except ValueError as exc:
            if strict:
                reason = str(exc).split("stays float: ", 1)[-1]
                raise ValueError(f"space['bits'][{name!r}]: {bits} bits cannot be lowered: {reason}") from None
            continue
        kept.append(bits)
    return tuple(kept) or (FLOAT,)


def _check_pruner(name: Any) -> str:
    from nnic.plugins import get_registry
    from nnic.pruning.structured import StructuredPruner

    if not isinstance(name, str):
        raise TypeError(f"space['pruners']: expected pruner names, got {name!r}")
    info = get_registry().get("pruner", name)
    if not (isinstance(info.obj, type) and issubclass(info.obj, StructuredPruner)) or info.name == "slim":
        raise ValueError(f"space['pruners']: {name!r} is not a channel pruner that works on Linear/Conv weights; "
                         f"auto_compress searches pruners whose result speedup makes really smaller "
                         f"(e.g. l1norm, l2norm, fpgm, taylor)")
    return info.name


def build_space(model: nn.Module, dummy_input: Any, space: Mapping[str, Any] | None) -> SearchSpace:
    """Resolve the user's ``space`` dict against ``model``; raises ``ValueError`` naming the bad key, or saying
    that the space is empty."""
    from nnic.measure import channel_groups

    space = dict(space or {})
    unknown = sorted(set(space) - set(_SPACE_KEYS))
    if unknown:
        raise ValueError(f"space: unknown key(s) {unknown}; expected some of {list(_SPACE_KEYS)}")
    pruners = space.get("pruners", ("l1norm",))
    pruners = (pruners,) if isinstance(pruners, str) else tuple(pruners)
    if not pruners:
        raise ValueError("space['pruners']: expected at least one pruner name, got none")
    pruners = tuple(dict.fromkeys(_check_pruner(p) for p in pruners))
    step = space.get("sparsity_step", 0.05)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ValueError(f"space['sparsity_step']: expected a float in (0, 1), got {step!r}")

    modules = dict(model.named_modules())
    layers = space.get("layers")
    if layers is None:
        excluded = output_layers(model, dummy_input)
        layers = [n for n, m in modules.items() if isinstance(m, _PRUNABLE) and n not in excluded]
    else:
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise TypeError(f"space['layers']: expected a list of layer names, got {type(layers).__name__}")
        for n in layers:
            if n not in modules or not isinstance(modules[n], _PRUNABLE):
                raise ValueError(f"space['layers']: {n!r} is not a Linear or Conv layer of the model")
    sparsity = space.get("sparsity", (0.0, 0.8))
    per_layer = ({n: _range(f"space['sparsity'][{n!r}]", sparsity.get(n, 0.0)) for n in layers}
                 if isinstance(sparsity, Mapping) else {n: _range("space['sparsity']", sparsity) for n in layers})
    if isinstance(sparsity, Mapping):
        for n in sparsity:
            if n not in per_layer:
                raise ValueError(f"space['sparsity']: {n!r} is not among the searched layers {sorted(per_layer)}")

    # One parameter per coupled group of searched layers; the group takes its members' narrowest range.
    coupled = channel_groups(model, dummy_input).groups
    groups: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for g in coupled:
        members = tuple(n for n in g.layers if n in per_layer)
        if members:
            groups[members[0]] = members
            seen.update(members)
    for n in per_layer:
        if n not in seen:
            groups[n] = (n,)
    ranges = {g: (max(per_layer[n][0] for n in members), min(per_layer[n][1] for n in members))
              for g, members in groups.items()}
    for g, (lo, hi) in ranges.items():
        ranges[g] = (lo, round(lo + math.floor((hi - lo) / step + 1e-9) * step, 6))  # Optuna's grid must end on a step
        if lo > hi:
            raise ValueError(f"space['sparsity']: the coupled layers {list(groups[g])} share channels, but their "
                             f"ranges do not overlap")

    bits = space.get("bits", _BITS)
    quantizable = [n for n, m in modules.items() if isinstance(m, _QUANTIZABLE)]
    if isinstance(bits, Mapping):
        for n in bits:
            if n not in quantizable:
                raise ValueError(f"space['bits']: {n!r} is not a Linear or Conv2d layer of the model")
        per_bits = {n: _lowerable(n, modules[n], _choices(f"space['bits'][{n!r}]", bits[n]), strict=True)
                    for n in bits}
    else:
        choices = _choices("space['bits']", bits)
        per_bits = {n: _lowerable(n, modules[n], choices, strict=False) for n in quantizable}
    per_bits = {n: c for n, c in per_bits.items() if c != (FLOAT,)}

    resolved = SearchSpace(pruners, groups, ranges, per_bits, float(step))
    if resolved.size == 0:
        raise ValueError("space is empty: no layer has a sparsity range wider than a point, no layer has a choice "
                         "of bits and there is one pruner; widen space['sparsity'] or space['bits'] "
                         f"(layers found: {sorted(per_layer) or 'none'})")
    return resolved


__all__ = ["FLOAT", "Configuration", "SearchSpace", "build_space", "output_layers"]
