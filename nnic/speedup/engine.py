"""ModelSpeedup: trace, propagate channel masks, decide what goes, shrink modules in place, verify."""

from __future__ import annotations

import inspect
import operator
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from nnic.speedup.capture import split_dummy_input, trace
from nnic.speedup.graph import Call, Spec, State, describe

_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class SpeedupWarning(UserWarning):
    """Speedup kept channels it could have removed (an op without a rule), or similar."""


class SpeedupError(RuntimeError):
    """Speedup could not proceed (strict mode and an op without a rule) or the result differs (verify)."""


class RuleTable:
    """Rules by module class, by function and by ``"Tensor.method"`` name."""

    def __init__(self, rules: Iterable[Any]) -> None:
        self.modules: dict[type, Any] = {}
        self.functions: dict[Any, Any] = {}
        self.methods: dict[str, Any] = {}
        for rule in rules:
            for target in getattr(rule, "targets", ()):
                if isinstance(target, type):
                    self.modules[target] = rule
                elif isinstance(target, str):
                    self.methods[target.removeprefix("Tensor.").removeprefix("torch.Tensor.")] = rule
                else:
                    self.functions[target] = rule

    @classmethod
    def from_registry(cls, extra: Iterable[Any] = ()) -> RuleTable:
        from nnic.plugins import get_registry

        return cls([info.obj for info in get_registry().list("speedup_rule")] + list(extra))

    def for_module(self, module: nn.Module) -> Any:
        kind = type(module)
        if kind in self.modules:
            return self.modules[kind]
        for base in kind.__mro__[1:]:
            if base in self.modules:
                # A subclass with its own forward computes something else: it needs its own rule.
                return self.modules[base] if kind.forward is base.forward else None
        return None

    def for_node(self, node: fx.Node, module: nn.Module | None) -> Any:
        if node.op == "call_module":
            return self.for_module(module)
        if node.op == "call_method":
            return self.methods.get(node.target)
        try:
            return self.functions.get(node.target)
        except TypeError:  # unhashable target
            return None

    @property
    def leaf_types(self) -> tuple[type, ...]:
        return tuple(self.modules)


def _placeholder_values(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    sig = inspect.signature(model.forward)
    bound = sig.bind_partial(*args, **kwargs)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        flat: dict[str, Any] = {}  # the order capture's explicit-argument forward uses
        for name, value in bound.arguments.items():
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                flat.update({f"_{name}_{i}": v for i, v in enumerate(value)})
            elif kind is inspect.Parameter.VAR_KEYWORD:
                flat.update({f"_{name}_{k}": v for k, v in value.items()})
            else:
                flat[name] = value
        return flat
    values = {}
    for p in sig.parameters.values():
        if p.name in bound.arguments:
            values[p.name] = bound.arguments[p.name]
        elif p.default is not inspect.Parameter.empty:
            values[p.name] = p.default
        else:
            values[p.name] = () if p.kind is p.VAR_POSITIONAL else {} if p.kind is p.VAR_KEYWORD else None
    return values


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    return node.target in _INPLACE_OPS or bool(node.kwargs.get("inplace", False))


def _tensors(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _tensors(o)]
    return [obj]


class Propagation:
    """Runs the traced graph on the dummy input (masked weights, eval mode), calling each node's rule."""

    def __init__(self, gm: fx.GraphModule, table: RuleTable, strict: bool) -> None:
        self.gm, self.table, self.strict = gm, table, strict
        self.state = State()
        self.warned: set[str] = set()
        self.output: Any = None

    def run(self, inputs: dict[str, Any]) -> State:
        """``inputs``: the forward's parameter values by name, in the signature's order (placeholders are
        matched by position: fx renames the ones it specialises)."""
        state = self.state
        ordered = iter(inputs.values())
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                state.values[node] = next(ordered, None)
                continue
            if node.op == "get_attr":
                state.values[node] = _fetch(self.gm, node.target)
                state.const.add(node)
                continue
            if node.op == "output":
                for spec in _tensors(fx.node.map_arg(node.args[0], lambda n: state.specs.get(n))):
                    if isinstance(spec, Spec):
                        state.pin(spec.ids, "a model output")
                self.output = fx.node.map_arg(node.args[0], lambda n: state.values[n])
                continue
            args = fx.node.map_arg(node.args, lambda n: state.values[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: state.values[n])
            module = self.gm.get_submodule(node.target) if node.op == "call_module" else None
            if module is not None:
                state.calls[node.target] = state.calls.get(node.target, 0) + 1
                value = module(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                value = node.target(*args, **kwargs)
            state.values[node] = value
            if all(n in state.const for n in node.all_input_nodes):
                state.const.add(node)
            self._propagate(node, module, args, kwargs, value)
        return state

    def _propagate(self, node: fx.Node, module: nn.Module | None, args, kwargs, value) -> None:
        state = self.state
        rule = self.table.for_node(node, module)
        call = Call(state, node, module, args, kwargs, value)
        if rule is None:
            labelled = call.input_specs()
            if labelled:
                self._no_rule(node, module)
                call.pin_inputs(f"{describe(node)} has no speedup rule")
            return
        if module is not None:
            state.slot_rules[node.target] = rule
        rule.propagate(call)
        state.specs[node] = call._output_spec
        if _is_inplace(node, module) and node.args and isinstance(node.args[0], fx.Node):
            state.specs[node.args[0]] = call._output_spec

    def _no_rule(self, node: fx.Node, module: nn.Module | None) -> None:
        what = describe(node) + (f" ({type(module).__name__})" if module is not None else "")
        kind = type(module).__qualname__ if module is not None else describe(node)
        hint = (
            "write a rule: an object with name, targets=(<the module class, function or 'Tensor.method'>,) and "
            "propagate(call) (and shrink(module, keep) for modules), registered through the "
            "register_speedup_rules hook or passed as speedup_model(..., rules=[...]); see docs/plugin-hooks.md"
        )
        if self.strict:
            raise SpeedupError(f"node {node.name!r} ({what}, op {node.op}) reads pruned channels and has no "
                               f"speedup rule; {hint}")
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(f"speedup: node {node.name!r} ({what}) has no speedup rule; the channels it reads are "
                          f"kept (pass strict=True to make this an error, or {hint})", SpeedupWarning, stacklevel=5)


def decide(state: State) -> set[int]:
    """The roots of the channel groups to remove."""
    uf = state.uf
    find = uf.find
    bad = {find(i) for i in state.pinned} | {find(i) for i in state.blocked}
    removed = {find(i) for i in range(len(uf.parent))} - bad

    def is_removed(i: int) -> bool:
        return find(i) in removed

    changed = True
    while changed:
        changed = False
        for ids in state.slots.values():
            if ids and all(is_removed(i) for i in ids):
                removed.discard(find(ids[0]))
                changed = True
        for constraint in state.constraints:
            for i in constraint(is_removed):
                if find(i) in removed:
                    removed.discard(find(i))
                    changed = True
    return removed


def _kept(ids: list[int], removed: set[int], find) -> torch.Tensor | None:
    keep = [k for k, i in enumerate(ids) if find(i) not in removed]
    return None if len(keep) == len(ids) else torch.tensor(keep, dtype=torch.long)


def apply(model: nn.Module, state: State, removed: set[int]) -> dict[str, dict[str, torch.Tensor]]:
    """Fold constants, shrink modules and slice parameters; returns ``{module: {slot: kept positions}}``."""
    find = state.uf.find
    keeps: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for (name, slot), ids in state.slots.items():
        index = _kept(ids, removed, find)
        if index is not None:
            keeps[name][slot] = index
    folds: dict[tuple[str, str], list] = defaultdict(list)
    for f in state.folds:
        if find(state.slots[(f.module, f.slot)][f.position]) in removed:
            folds[(f.module, f.slot)].append(f)
    with torch.no_grad():
        for (name, slot), fs in folds.items():
            module = model.get_submodule(name)
            positions = torch.tensor([f.position for f in fs], dtype=torch.long)
            values = torch.tensor([f.value for f in fs], dtype=torch.float64)
            state.slot_rules[name].fold(module, slot, positions, values)
        for name, keep in keeps.items():
            module = model.get_submodule(name)
            new = state.slot_rules[name].shrink(module, keep)
            if new is not None and new is not module:
                new.train(module.training)
                _set_submodule(model, name, new)
        done = set()
        for path, dim, ids in state.params:
            if path in done:
                continue
            done.add(path)
            index = _kept(ids, removed, find)
            if index is not None:
                owner_name, _, attr = path.rpartition(".")
                owner = model.get_submodule(owner_name)
                from nnic.speedup.rules import slice_param

                slice_param(owner, attr, index, dim)
    return dict(keeps)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)


def unwrap_masks(model: nn.Module) -> None:
    """Fold nnic's mask parametrizations into plain weights (speedup needs plain modules)."""
    from nnic.masking import ParameterMask, fold_masks

    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname in module.parametrizations.keys():
            if not all(isinstance(p, ParameterMask) for p in module.parametrizations[pname]):
                raise SpeedupError(f"{name}.{pname} has a parametrization other than an nnic mask; remove it "
                                   f"(e.g. unwrap the quantizer) before speedup")
        fold_masks(module)


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
    with torch.no_grad():
        for layer, per_param in masks.items():
            module = model.get_submodule(layer)
            for pname, mask in per_param.items():
                if mask is None:
                    continue
                p = getattr(module, pname)
                p.mul_(mask.to(device=p.device, dtype=torch.bool).to(p.dtype))


def trace_and_propagate(model, args, kwargs, table, *, leaf_modules=(), strict=False) -> Propagation:
    gm = trace(model, args, kwargs, leaf_types=table.leaf_types, leaf_modules=leaf_modules)
    prop = Propagation(gm, table, strict)
    with torch.no_grad():
        prop.run(_placeholder_values(model, args, kwargs))
    return prop


__all__ = ["Propagation", "RuleTable", "SpeedupError", "SpeedupWarning", "apply", "apply_masks", "decide",
           "split_dummy_input", "trace_and_propagate", "unwrap_masks"]
