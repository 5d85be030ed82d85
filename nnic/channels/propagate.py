"""Channel propagation: run the traced graph on real values, calling each node's rule.

Speedup after dependency-aware pruning first tries a *value-free* propagation: the graph and every node's value
come from the pruning's trace (shapes only: it ran on the unmasked weights), and which dead channels are zero
comes from the constants the rules derive from the masks (:mod:`~nnic.channels.constants`), so the masked model
does not run. A rule without a value-free form, or a dead channel whose value the masks alone do not give (a
BatchNorm whose bias keeps a pruned channel at a constant that then meets padding), raises
:class:`~nnic.channels.graph.NeedsValues`, and the propagation runs on the masked model's values as before.

The rules come in as a :class:`RuleTable` built by the caller (speedup or dependency-aware pruning): this floor
knows the rule *protocol* (``targets``, ``propagate(call)``), never where rules are registered.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from nnic.channels import reuse
from nnic.channels.capture import Capture, capture
from nnic.channels.collector import collection_paused
from nnic.channels.graph import Call, NeedsValues, Spec, State, describe
from nnic.channels.tracer import eval_mode, fetch_attr, placeholder_values, split_dummy_input, submodule

_MISSING = object()
_SHAPE_INPLACE = {"unsqueeze_", "squeeze_", "t_", "transpose_", "swapdims_", "swapaxes_", "resize_", "resize_as_",
                  "as_strided_", "set_"}
_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class SpeedupWarning(UserWarning):
    """Channel propagation (speedup, dependency-aware pruning) kept channels it could have removed (an op without a rule), or similar."""


class SpeedupError(RuntimeError):
    """Channel propagation or speedup could not proceed (strict mode and an op without a rule) or the result differs (verify)."""


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


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":  # a plain attribute, read without nn.Module.__getattr__, whose miss raises an
        # AttributeError (2 us on every module without ``inplace``, twice a node)
        found = vars(module).get("inplace", _MISSING)
        return bool(getattr(type(module), "inplace", False) if found is _MISSING else found)
    return node.target in _INPLACE_OPS or bool(node.kwargs.get("inplace", False))


def _compute(node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict) -> Any:
    if module is not None:
        return module(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _shapes_hold(gm: fx.GraphModule) -> bool:
    """Whether every value computed while tracing still has the shape it had when its node ran: no in-place op
    changes a shape (``unsqueeze_``...). Other in-place ops (``relu_``, ``+=``) change values after their node,
    which is why only a structure-only propagation, which reads shapes, takes values from the trace."""
    return not any(n.op == "call_method" and n.target in _SHAPE_INPLACE for n in gm.graph.nodes)


def _tensors(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _tensors(o)]
    return [obj]


class Propagation:
    """Runs the traced graph on the dummy input (masked weights, eval mode), calling each node's rule."""

    def __init__(self, gm: fx.GraphModule, table: RuleTable, strict: bool, structure_only: bool = False,
                 value_free: bool = False) -> None:
        self.gm, self.table, self.strict = gm, table, strict
        self.state = State(structure_only=structure_only, value_free=value_free)
        # Why the propagation ran on the masked model's values ("" when it did not: value-free).
        self.values_why = "" if value_free else "asked for"
        self.warned: set[str] = set()
        self.output: Any = None
        self.capture: Capture | None = None
        self.groups_reused = False  # the groups came from an earlier propagation with the same unions

    def run(self, inputs: dict[str, Any], gm: fx.GraphModule | None = None, output_why: str = "a model output",
            known: Mapping[fx.Node, Any] | None = None) -> State:
        """``inputs``: the forward's parameter values by name, in the signature's order (placeholders are
        matched by position: fx renames the ones it specialises). ``gm``: another graph over the same model
        (a region of a fallback capture) whose output channels are kept for ``output_why``. ``known``: values
        of nodes already computed on these inputs (while tracing), not computed again."""
        known = known or {}
        state = self.state
        gm = self.gm if gm is None else gm
        ordered = iter(inputs.values())
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                state.values[node] = next(ordered, None)
                continue
            if node.op == "get_attr":
                state.values[node] = fetch_attr(gm, node.target)
                state.const.add(node)
                continue
            if node.op == "output":
                for spec in _tensors(fx.node.map_arg(node.args[0], lambda n: state.specs.get(n))):
                    if isinstance(spec, Spec):
                        state.pin(spec.ids, output_why)
                if not state.value_free:  # the trace's values are not the masked model's output
                    self.output = fx.node.map_arg(node.args[0], lambda n: state.values[n])
                continue
            args = fx.node.map_arg(node.args, lambda n: state.values[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: state.values[n])
            module = submodule(gm, node.target) if node.op == "call_module" else None
            if module is not None:
                state.calls[node.target] = state.calls.get(node.target, 0) + 1
            is_const = all(n in state.const for n in node.all_input_nodes)
            # A value-free propagation computes what depends on parameters only (the trace saw them unmasked).
            value = _MISSING if state.value_free and is_const else known.get(node, _MISSING)
            if value is _MISSING:
                value = _compute(node, module, args, kwargs)
            state.values[node] = value
            if is_const:
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
        if state.value_free and not getattr(rule, "value_free", False):
            raise NeedsValues(f"{describe(node)}: rule {getattr(rule, 'name', rule)!r} has no value-free form")
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
                          f"kept (pass strict=True to make this an error, or {hint})", SpeedupWarning, stacklevel=6)


def _all_known(gm: fx.GraphModule, values: Mapping[fx.Node, Any]) -> bool:
    """Whether the trace computed every node's value (else the propagation computes them all: it would
    compute the missing ones from the stand-ins of large values)."""
    return all(n in values for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr", "output"))


def _propagate(captured: Capture, table: RuleTable, strict: bool, structure_only: bool,
               use_known: bool, value_free: bool = False, known: Mapping[fx.Node, Any] | None = None) -> Propagation:
    prop = Propagation(captured.parts[0].gm, table, strict, structure_only, value_free)
    prop.capture = captured
    known = captured.values if known is None else known
    with torch.no_grad():
        for part in captured.parts:
            why = "a model output" if captured.kind == "fx" else \
                f"output of {part.prefix!r}, read by code that could not be traced"
            for module, a, kw in part.calls:
                prop.run(placeholder_values(module, a, kw), part.gm, why, known=known if use_known else None)
    return prop


def _value_free(model: nn.Module, captured: Capture, args: tuple, kwargs: dict, table: RuleTable,
                strict: bool) -> Propagation | str:
    """The value-free propagation over the pruning's trace values, or why there is none."""
    if captured.kind != "fx" or captured.key is None:
        return f"capture {captured.kind!r}: no trace values"
    known = captured.values or reuse.recall_values(model, captured.key, args, kwargs)
    if not known:
        return "no trace values of this model and input (the structure pass of dependency-aware pruning keeps them)"
    gm = captured.parts[0].gm
    if not (_shapes_hold(gm) and _all_known(gm, known)):
        return "the trace's values do not cover the graph"
    try:
        with warnings.catch_warnings(record=True) as caught:  # given again only if this propagation is the one
            warnings.simplefilter("always")
            prop = _propagate(captured, table, strict, False, True, value_free=True, known=known)
    except NeedsValues as exc:
        return str(exc)
    except Exception as exc:  # a rule that fails on the trace's stand-ins: the values will do
        return f"{type(exc).__name__}: {exc}"
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return prop


@collection_paused()
def analyze(model: nn.Module, dummy_input: Any, table: RuleTable, *, leaf_modules: Iterable[str | type] = (),
            strict: bool = False, fallback: bool = True, structure_only: bool = False,
            value_free: bool = False, modules: Iterable[nn.Module] | None = None) -> Propagation:
    """Capture ``model`` (:func:`~nnic.channels.capture.capture`: fx, or regions when fx cannot trace it) and
    propagate channel labels through it with ``table``'s rules, in eval mode and without gradients; the model's
    train/eval modes are restored; ``prop.capture`` says how it was captured (``fallback=False``: fx or an
    error). ``structure_only=True`` asks only for the coupling (ids, couplings, pins, constraints: what
    dependency-aware pruning reads), not for what speedup decides with (dead channels, sinks, folds).
    ``value_free=True`` tries the value-free propagation first (see the module docstring) and runs on values
    when it cannot; ``prop.values_why`` says why it did ("" when it did not). The one spelling of capture +
    propagation that speedup and dependency-aware pruning share. ``modules``: the model's modules where the
    caller has just walked them (speedup's walk: ``modules()`` is some 0.7 ms on a 330-module model)."""
    args, kwargs = split_dummy_input(model, dummy_input)
    modes = {m: m.training for m in (model.modules() if modules is None else modules)}
    try:
        eval_mode(model, modes)
        captured = capture(model, args, kwargs, leaf_types=table.leaf_types, leaf_modules=leaf_modules,
                           fallback=fallback, values=structure_only)
        # Values computed while tracing, for the shapes a structure-only propagation reads (large ones as
        # stand-ins: nnic.channels.concrete.ValueTracer); if a rule fails on them, the values are computed.
        use_known = structure_only and all(_shapes_hold(p.gm) and _all_known(p.gm, captured.values)
                                           for p in captured.parts)
        found = _value_free(model, captured, args, kwargs, table, strict) if value_free and not structure_only \
            else "asked for"
        if isinstance(found, Propagation):
            prop = found
        else:
            try:
                prop = _propagate(captured, table, strict, structure_only, use_known)
            except Exception:
                if not use_known:
                    raise
                prop = _propagate(captured, table, strict, structure_only, False)
            prop.values_why = found
        if captured.key is not None:  # an fx graph: the next analysis of this model may ask for the same unions
            record = reuse.recall_unions(model, captured.key)
            prop.groups_reused = record is not None and prop.state.uf.adopt(record)
            if not prop.groups_reused:
                reuse.remember_unions(model, captured.key, prop.state.uf.record())
    finally:
        for m, mode in modes.items():
            if m.training != mode:  # a set through nn.Module.__setattr__ is some 2 us a module
                m.training = mode
    return prop


__all__ = ["Propagation", "RuleTable", "SpeedupError", "SpeedupWarning", "analyze", "placeholder_values"]
