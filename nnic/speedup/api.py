"""``nnic.speedup_model`` and ``nnic.ModelSpeedup``: make a masked model physically smaller."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnic.channels.capture import split_dummy_input
from nnic.channels.collector import collection_paused
from nnic.channels.graph import Spec, State, flags
from nnic.channels.propagate import Propagation, RuleTable, SpeedupError, analyze
from nnic.channels.tracer import eval_mode, submodule
from nnic.masking import ParameterMask, check_masks, is_parametrized, only_masks_test
from nnic.speedup.engine import apply, apply_masks, decide, same_tensor, unwrap_masks
from nnic.speedup.reference import masked_output
from nnic.speedup.ties import retie, tied_parameters

# Verification tolerances (rtol, atol) by dtype: shrinking changes summation order, whose rounding grows with
# the dtype's epsilon; float32's tolerances would fail every half-precision model.
_TOLERANCES = {torch.float16: (1e-2, 1e-3), torch.bfloat16: (5e-2, 1e-2)}
_DEFAULT_TOLERANCE = (1e-4, 1e-5)


class _ModuleTree:
    """The model's modules, walked once for speedup's snapshot, its scan of attached masks and its fold: the
    ``named`` modules in ``named_modules`` order, less the mask parametrizations that the fold removes whole
    and leaves unchanged (:func:`nnic.masking.fold_only_masks`, on a module :func:`nnic.masking.only_masks_test`
    accepts). Their modules are ``sealed``: their ``parametrizations`` container is not walked, so a restore
    that puts the module's own ``_modules`` back puts them back as they were. A pruner's ``compress()`` leaves
    every masked module so (a ModuleDict, a ParametrizationList and a ParameterMask per masked parameter: some
    two thirds of a compressed torchvision classifier's modules), and the snapshot recorded and the scan and
    fold walked each of them (some 5 ms of RegNetX-400MF's two calls)."""

    def __init__(self, model: nn.Module) -> None:
        named: list[tuple[str, nn.Module]] = []
        self.sealed: dict[nn.Module, None] = {}  # in walk order
        self.parametrized: list[tuple[str, nn.Module]] = []
        sealable = only_masks_test()
        seen: set[nn.Module] = set()
        stack = [("", model)]
        while stack:  # pre-order, each module once under its first name: as named_modules
            name, m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            named.append((name, m))
            children, skip = m._modules, None
            if "parametrizations" in children:
                if sealable(m):
                    self.sealed[m] = None
                    self.parametrized.append((name, m))
                    skip = "parametrizations"
                elif is_parametrized(m):
                    self.parametrized.append((name, m))
            prefix = name + "." if name else ""
            stack.extend((prefix + k, c) for k, c in reversed(children.items()) if c is not None and k != skip)
        self.named = named

    def sealed_originals(self) -> list[torch.Tensor]:
        """The stored tensors behind the sealed modules' masks (which the fold registers on the modules)."""
        return [plist._parameters["original"] for m in self.sealed
                for plist in m._modules["parametrizations"]._modules.values()]


class _Snapshot:
    """Every module's attributes, parameters, buffers and children, and every tensor's values, so that a
    failed speedup can put the model back exactly (rules replace parameters, modules and attributes, and
    may fold values into tensors in place).

    ``remasked``: tensors that are masked again after a failure (the originals behind attached mask
    parametrizations, which the restore puts back; the weights :func:`~nnic.speedup.prune_and_speedup` masks,
    which it then attaches). Speedup writes into them in place only where those masks are zero, which is
    hidden again afterwards (and held zeros already where the masks were attached), so they are not copied:
    the snapshot keeps each one's storage, and a tensor whose storage was replaced gets it back. A step that may write elsewhere in a module's tensors (a rule's
    ``fold``, a plugin rule's ``shrink``) calls :meth:`protect` first, which copies them then. Copying every
    tensor was 0.03-0.05 s of a torchvision classifier's speedup, most of it for the masked weights."""

    def __init__(self, model: nn.Module, remasked: Iterable[torch.Tensor] = (),
                 tree: _ModuleTree | None = None) -> None:
        tree = _ModuleTree(model) if tree is None else tree
        modules = [m for _, m in tree.named]
        self.modules = [(m, m.__class__, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                        for m in modules]  # the class too: mask parametrizations swap it
        # Removing a parametrization deletes its property from the generated class: keep them to put back.
        self.properties = {m.__class__: {k: v for k, v in vars(m.__class__).items() if isinstance(v, property)}
                           for _, m in tree.parametrized}
        tensors = {id(t): t for m in modules for t in (*m._parameters.values(), *m._buffers.values())
                   if t is not None}
        # The originals behind sealed parametrizations (their containers are not walked): a fold registers
        # them on their module, where a rule may write into them.
        tensors.update((id(t), t) for t in tree.sealed_originals())
        skip = {id(t) for t in remasked} & tensors.keys()
        self.storage = {i: (tensors[i], tensors[i].detach()) for i in skip}  # id -> (tensor, its storage now)
        with torch.no_grad():
            self.values = [(t, t.detach().clone()) for i, t in tensors.items() if i not in skip]

    def protect(self, module: nn.Module) -> None:
        """Copy ``module``'s tensors that are kept by storage only, before something writes into them."""
        for t in (*module._parameters.values(), *module._buffers.values()):
            kept = self.storage.pop(id(t), None) if t is not None else None
            if kept is not None:
                with torch.no_grad():
                    self.values.append((t, t.detach().clone()))

    def restore(self) -> None:
        for cls, properties in self.properties.items():
            for name, prop in properties.items():
                if name not in vars(cls):
                    setattr(cls, name, prop)
        for module, cls, attrs, params, buffers, children in self.modules:
            module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(attrs)
            # Copies: a restored model may be changed again (and restored again) after this.
            module._parameters, module._buffers, module._modules = dict(params), dict(buffers), dict(children)
        with torch.no_grad():
            for tensor, value in self.values:
                if tensor.shape == value.shape:
                    tensor.copy_(value)
                else:
                    tensor.data = value.clone()  # the snapshot stays intact for another restore
            for tensor, storage in self.storage.values():
                if tensor.data_ptr() != storage.data_ptr() or tensor.shape != storage.shape \
                        or tensor.stride() != storage.stride():
                    tensor.data = storage


@dataclass
class KeptGroup:
    """Channels the masks asked to remove (their producers' weights are zero) that speedup kept, and why:
    ``channels`` of them, coupled across ``modules``, kept for ``reason``."""

    reason: str
    channels: int
    modules: list[str]


@dataclass
class SpeedupReport:
    """What speedup did: kept positions per shrunk module slot, and why channels were kept.

    ``pinned`` counts channel ids by the reason they were pinned (model outputs included); ``kept_groups``
    lists, per coupled group of modules and reason, the masked channels speedup could not remove. ``capture`` is
    how the model was analysed (``"fx"``: one graph; ``"regions"``: fx could not trace the model's forward, so the
    largest traceable submodules were analysed on the inputs they really received) and ``not_analysed`` names the
    modules whose own forward code could not be traced (the channels crossing it were kept), with why."""

    shrunk: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    removed_groups: int = 0
    pinned: dict[str, int] = field(default_factory=dict)  # reason -> number of channel ids
    capture: str = "fx"
    not_analysed: dict[str, str] = field(default_factory=dict)
    kept_groups: list[KeptGroup] = field(default_factory=list)
    # "value-free": the dead channels came from the masks alone (no forward of the masked model); else
    # "values: <why>", the propagation ran on the masked model's values.
    propagation: str = "values"

    def __str__(self) -> str:
        lines = [f"{len(self.shrunk)} modules shrunk, {self.removed_groups} channel groups removed "
                 f"(capture: {self.capture}; propagation: {self.propagation.splitlines()[0][:160]})"]
        lines += [f"  not analysed: {name or '<root>'}: {why.splitlines()[0][:160]}"
                  for name, why in self.not_analysed.items()]
        lines += [f"  kept {n} ids: {why}" for why, n in sorted(self.pinned.items(), key=lambda kv: -kv[1])[:10]]
        lines += [f"  kept {g.channels} masked channels of {', '.join(g.modules[:4])}"
                  f"{' ...' if len(g.modules) > 4 else ''}: {g.reason}" for g in self.kept_groups[:10]]
        return "\n".join(lines)


def tolerance(dtype: torch.dtype, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """The verification tolerances for outputs of ``dtype``; explicit values win."""
    default_rtol, default_atol = _TOLERANCES.get(dtype, _DEFAULT_TOLERANCE)
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def outputs_close(a: Any, b: Any, rtol: float | None, atol: float | None) -> bool:
    """Whether model output ``a`` matches the reference ``b`` (tensors, or tuples/lists/mappings of them): float
    tensors within ``atol + rtol * max|b|`` (defaults per dtype: :func:`tolerance`), others exactly."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        rtol, atol = tolerance(b.dtype, rtol, atol)
        a, b = a.double(), b.double()
        scale = float(b.detach().abs().max()) if b.numel() else 0.0
        return bool((a.detach() - b.detach()).abs().max() <= atol + rtol * scale) if a.numel() else True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(outputs_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(outputs_close(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    if isinstance(b, (int, float, complex, str, bytes, bool, type(None))):
        return a == b
    # Other objects (a transformers key/value cache) hold state, not results; after head pruning their
    # tensors legitimately have fewer heads, and the results they feed are compared above.
    return type(a) is type(b)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return type(obj)({k: _clone(v) for k, v in obj.items()}) if type(obj) is dict else {k: _clone(v) for k, v in obj.items()}
    if hasattr(obj, "_fields"):
        return type(obj)(*(_clone(o) for o in obj))
    return obj


def _run_recording(model: nn.Module, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
    """The model's output and each leaf module's first output, cloned."""
    outputs: dict[str, Any] = {}
    hooks = []

    def record(name: str, out: Any) -> None:  # a hook returning a value would replace the output
        if name not in outputs:
            outputs[name] = _clone(out)

    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: record(name, o)))
    try:
        with torch.no_grad():
            out = _clone(model(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    return out, outputs


class ModelSpeedup:
    """Remove the channels that ``masks`` prune, for real, from ``model`` (in place).

    :param model: the model; masks already attached by a pruner (nnic parametrizations) are folded in first.
    :param dummy_input: a tensor (the single positional argument), a tuple/list (positional arguments) or a
        dict (keyword arguments), on the model's device.
    :param masks: ``{layer: {param: mask}}`` (as :mod:`nnic.masking` defines them); may be empty when the weights already hold zeros.
    :param rules: extra speedup rules, on top of those the installed plugins register.
    :param leaf_modules: module names or classes not to trace into (kept whole unless a rule handles them).
    :param strict: raise, instead of warning, when an op without a rule reads prunable channels.
    :param capture: ``"auto"``: torch.fx, and when fx cannot trace the model's forward, the regions that follow
        its real execution on ``dummy_input`` (see :class:`SpeedupReport`); ``"fx"``: fx only, an untraceable
        model raises :class:`~nnic.channels.CaptureError` naming the module and line.
    :param verify: compare the result's output with the masked model's on ``dummy_input`` and raise
        :class:`SpeedupError` naming the first differing layer.
    :param rtol, atol: verification tolerances; by default they follow the output's dtype (float16 and
        bfloat16 get looser ones than float32).
    :param value_free: after dependency-aware pruning of the same model on the same input, derive the dead
        channels from the masks and the pruning's trace (no forward of the masked model) when every rule on
        the graph can; verification then runs the masked model once for its reference. ``False``: always
        propagate on the masked model's values. The report's ``propagation`` says which ran, and why.

    A speedup that fails for any reason (untraceable model, wrong dummy input, failed verification...) leaves
    the model exactly as it was: masks attached, weights, modules and train/eval modes untouched. Parameters
    shared by several modules (an output layer tied to an embedding) stay shared: where the modules would
    lose different channels, those channels are kept.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks: Mapping | None = None, *,
                 rules: Iterable[Any] = (), leaf_modules: Iterable[str | type] = (), strict: bool = False,
                 capture: str = "auto", verify: bool = True, rtol: float | None = None, atol: float | None = None,
                 value_free: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if masks is not None and not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a dict {{layer_name: {{param_name: mask}}}} or None, got "
                            f"{type(masks).__name__} (the third argument of speedup_model is the masks; pass "
                            f"several inputs as one tuple)")
        if capture not in ("auto", "fx"):
            raise ValueError(f"capture: expected 'auto' or 'fx', got {capture!r}")
        _check_not_meta(model, dummy_input)
        self.model, self.dummy_input, self.masks = model, dummy_input, dict(masks or {})
        self.rules, self.leaf_modules = list(rules), list(leaf_modules)
        self.capture = capture
        self.strict, self.verify, self.rtol, self.atol = strict, verify, rtol, atol
        self.value_free = value_free
        self.report = SpeedupReport()

    def speedup_model(self) -> nn.Module:
        return self._run(remasked=False)

    @collection_paused()
    def _run(self, remasked: bool, checked: bool = False) -> nn.Module:
        """:meth:`speedup_model`; ``remasked=True`` when the caller attaches ``self.masks`` again if this
        fails (:func:`~nnic.speedup.prune_and_speedup`), so the masked weights' values under their masks need
        not be kept for the restore (:class:`_Snapshot`); ``checked=True`` when the caller has just checked
        ``self.masks`` against the model (``Pruner.checked_masks``)."""
        model = self.model
        if not checked:
            check_masks(model, self.masks)
        split_dummy_input(model, self.dummy_input)  # its TypeError before any work
        table = RuleTable(registered_rules() + self.rules)
        # Before the masks are folded: a failure must not leave zeroed weights (unless they are masked again).
        self._tree = _ModuleTree(model)
        snapshot = _Snapshot(model, self._masked_tensors(remasked), self._tree)
        modes = {m: m.training for m, *_ in snapshot.modules}
        failed = False
        try:
            self._fold_masks()
            walked = [m for _, m in self._tree.named]  # every module left after the fold (see _fold_masks)
            prop = analyze(model, self.dummy_input, table, leaf_modules=self.leaf_modules, strict=self.strict,
                           fallback=self.capture == "auto", value_free=self.value_free, modules=walked)
            if self.verify:
                reference = _reference(model, self.dummy_input, prop, walked)
            ties = tied_parameters(model)
            why: dict[int, str] = {}
            removed = decide(prop.state, why)
            self.report.shrunk = apply(model, prop.state, removed, snapshot.protect)
            broken = retie(model, ties)
            if broken:  # keep the channels of modules whose shared parameter would come apart, and redo
                snapshot.restore()
                self._fold_masks()
                _pin_tied(model, prop.state, broken)
                why.clear()
                removed = decide(prop.state, why)
                self.report.shrunk = apply(model, prop.state, removed, snapshot.protect)
                broken = retie(model, ties)
                if broken:
                    raise SpeedupError(f"speedup would untie shared parameters {broken}; keep them whole with "
                                       f"leaf_modules=[...] or untie them before speedup")
            self.report = self._report(prop, removed, why, self.report.shrunk)
            self.report.capture = prop.capture.kind
            self.report.propagation = f"values: {prop.values_why}" if prop.values_why else "value-free"
            self.report.not_analysed = dict(prop.capture.not_analysed)
            if self.verify:
                args, kwargs = split_dummy_input(model, self.dummy_input)
                try:
                    with torch.no_grad():
                        got = model(*args, **kwargs)
                except Exception as exc:  # a rule shrank what another module still reads at its old size
                    raise SpeedupError(f"verify: the sped-up model fails on the dummy input ({type(exc).__name__}: "
                                       f"{exc}); a speedup rule removed channels that code it does not see still "
                                       f"reads (keep that module whole with leaf_modules=[...])") from exc
                if not outputs_close(got, reference, self.rtol, self.atol):
                    raise SpeedupError(self._mismatch(model, args, kwargs, prop, removed, snapshot))
        except BaseException:
            failed = True
            snapshot.restore()  # a failed speedup leaves the model as it was, masks included
            raise
        finally:
            for m, mode in modes.items():
                if m.training != mode:  # a set through nn.Module.__setattr__ is some 2 us a module
                    m.training = mode
            # Modules a rule put in take the model's mode. (Restored, the model holds none; the containers of
            # its sealed parametrizations, back in it, were out of it, untouched, while speedup ran.)
            for m in () if failed else model.modules():
                if m not in modes and m.training != model.training:
                    m.training = model.training
        return model

    def _masked_tensors(self, remasked: bool) -> list[torch.Tensor]:
        """The stored tensors whose values speedup changes only under masks that hide them again after a
        failure, so that the restore need not copy them (:class:`_Snapshot`): the originals behind attached
        mask parametrizations (the restore attaches them again; masks given for the same parameter must be
        those very masks) and their masks (never written), and with ``remasked`` those that ``self.masks``
        mask."""
        out = []
        for name, module in self._tree.parametrized:
            given_here = self.masks.get(name) or {}
            # Through the modules' own dicts: 2 us of nn.Module.__getattr__ per read, some 900 reads after a
            # pruner's compress() (a ModuleDict, a ParametrizationList and a mask per masked parameter).
            for pname, plist in module._modules["parametrizations"]._modules.items():
                steps = list(plist._modules.values())
                attached = [p._buffers["mask"] for p in steps if isinstance(p, ParameterMask)]
                given = given_here.get(pname)
                if len(attached) == len(steps) and (given is None or any(same_tensor(given, m) for m in attached)):
                    out.append(plist._parameters["original"] if "original" in plist._parameters else plist.original)
                out += attached  # the masks themselves: read, never written
        for layer, per_param in self.masks.items() if remasked else ():
            module = submodule(self.model, layer)
            for pname, mask in per_param.items():
                if mask is not None and not is_parametrized(module, pname):
                    out.append(getattr(module, pname))
        return out

    def _fold_masks(self) -> None:
        apply_masks(self.model, self.masks, unwrap_masks(self.model, self._tree.parametrized, self._tree.sealed))
        # The walk holds every module left after the fold (and the containers of parametrizations folded
        # torch's way, now out of the model: at worst an eval() that was not needed).
        eval_mode(self.model, (m for _, m in self._tree.named))

    def _report(self, prop: Propagation, removed: set[int], why: dict[int, str], shrunk: dict) -> SpeedupReport:
        state = prop.state
        report = SpeedupReport(shrunk=shrunk, removed_groups=len(removed))
        for reason in state.pinned.values():
            report.pinned[reason] = report.pinned.get(reason, 0) + 1
        report.kept_groups = kept_groups(prop, why)
        return report

    def _mismatch(self, model, args, kwargs, prop, removed, snapshot: _Snapshot) -> str:
        """Which layer differs first: the sped-up model's layers, then the masked model's (put back from the
        snapshot; the caller restores it again when it raises)."""
        _, got_layers = _run_recording(model, args, kwargs)
        snapshot.restore()
        self._fold_masks()
        _, ref_layers = _run_recording(model, args, kwargs)
        kinds = {n: type(m).__name__ for n, m in model.named_modules()}
        state, find = prop.state, prop.state.uf.roots().__getitem__  # only when verification failed
        for node in (n for part in prop.capture.parts for n in part.gm.graph.nodes):
            if node.op != "call_module" or node.target not in ref_layers:
                continue
            ref, got = ref_layers[node.target], got_layers.get(node.target)
            spec = state.specs.get(node)
            if isinstance(spec, Spec) and isinstance(ref, torch.Tensor):
                keep = [k for k, i in enumerate(spec.ids) if find(i) not in removed]
                ref = ref.index_select(spec.dim, torch.tensor(keep, dtype=torch.long, device=ref.device))
            if not outputs_close(got, ref, self.rtol, self.atol):
                detail = ""
                if isinstance(got, torch.Tensor) and isinstance(ref, torch.Tensor) and got.shape == ref.shape:
                    detail = f" (max abs difference {float((got - ref).abs().max()):.3g})"
                elif isinstance(got, torch.Tensor) and isinstance(ref, torch.Tensor):
                    detail = f" (shape {tuple(got.shape)}, expected {tuple(ref.shape)})"
                return (f"verify: the sped-up model's output differs from the masked model's; first differing "
                        f"layer: {node.target!r} ({kinds.get(node.target, '?')}){detail}")
        return "verify: the sped-up model's output differs from the masked model's (no single layer differs)"


def _reference(model: nn.Module, dummy_input: Any, prop: Propagation, modules: list[nn.Module]) -> Any:
    """The masked model's output, to verify against. A capture of the whole model (``"fx"``, ``"concrete"``)
    propagated on values computed it, on the same weights and input: no second forward. A value-free
    propagation ran nothing, and a region capture did not run the model's own code between its regions, so
    the model runs once more, its large layers skipping the exact zeros of weights and activations
    (:mod:`~nnic.speedup.reference`)."""
    if prop.capture is not None and prop.capture.kind in ("fx", "concrete") and prop.values_why:
        return _clone(prop.output)
    args, kwargs = split_dummy_input(model, dummy_input)
    return _clone(masked_output(model, args, kwargs, modules))


def kept_groups(prop: Propagation, why: dict[int, str]) -> list[KeptGroup]:
    """The masked channels that stay, by reason and coupled modules, most channels first. A channel counts as
    masked when a module produced it as input-independent (its weights there are zero)."""
    state = prop.state
    roots = state.uf.root_array()
    asked = np.zeros(len(roots), dtype=bool)  # by root id
    nodes = (n for part in prop.capture.parts for n in part.gm.graph.nodes) if prop.capture else prop.gm.graph.nodes
    for node in nodes:
        spec = state.specs.get(node)
        if node.op == "call_module" and isinstance(spec, Spec):
            dead = flags(spec.dead)  # numpy's any on the flags: a third of torch's per call
            if dead.any():
                asked[state.roots_of(spec.ids)[dead]] = True
    kept = {r: reason for r, reason in why.items() if asked[r]}
    if not kept:
        return []
    is_kept = np.zeros(len(roots), dtype=bool)
    is_kept[np.fromiter(kept.keys(), dtype=np.int64, count=len(kept))] = True
    modules: dict[int, set[str]] = {}
    for (module, _slot), ids in state.slots.items():
        slot_roots = state.roots_of(ids)
        held = slot_roots[is_kept[slot_roots]]
        if held.size:  # most slots hold no kept channel: no np.unique for them
            for r in np.unique(held).tolist():
                modules.setdefault(r, set()).add(module)
    counts: dict[tuple[str, tuple[str, ...]], int] = {}
    for r, reason in kept.items():
        key = (reason, tuple(sorted(modules.get(r, ()))))
        counts[key] = counts.get(key, 0) + 1
    groups = [KeptGroup(reason, n, list(names)) for (reason, names), n in counts.items()]
    return sorted(groups, key=lambda g: (-g.channels, g.reason))


def registered_rules() -> list[Any]:
    """The speedup rules the installed plugins (nnic's built-ins included) register."""
    from nnic.plugins import get_registry

    return [info.obj for info in get_registry().list("speedup_rule")]


def _check_not_meta(model: nn.Module, dummy_input: Any) -> None:
    # One walk down the _modules dicts: ``modules()`` nests a generator per level, and a compressed model holds
    # three parametrization modules per masked weight (1.4 -> 0.75 ms on RegNetX-400MF before the masks).
    stack, seen = [model], set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None and t.is_meta:
                    _name_meta(model)
        stack.extend(c for c in m._modules.values() if c is not None)
    for t in _flat_tensors(dummy_input):
        if t.is_meta:
            raise ValueError("dummy_input: holds a tensor on the meta device; pass real values")


def _name_meta(model: nn.Module) -> None:
    """Raise for the first tensor on the meta device, by name (the names are built only when one is)."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_meta:
            raise ValueError(f"model: {name!r} is on the meta device (no values); speedup reads the weights: "
                             f"materialize the model first (to_empty(device=...) and load its weights)")


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _flat_tensors(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _flat_tensors(o)]
    return []


def _pin_tied(model: nn.Module, state: State, broken: list[list[str]]) -> None:
    """Keep every channel of the modules (and graph constants) that hold a parameter of a broken tie."""
    for names in broken:
        why = f"parameter shared by {', '.join(names)}"
        owners = {n.rpartition(".")[0] for n in names}
        for (module, _slot), ids in state.slots.items():
            if module in owners:
                state.pin(ids, why)
        for path, _dim, ids in state.params:
            if path in names:
                state.pin(ids, why)


def speedup_model(model: nn.Module, dummy_input: Any, masks: Mapping | None = None, **kwargs: Any) -> nn.Module:
    """Make ``model`` physically smaller by removing the channels ``masks`` prune; returns the same object.

    Keyword arguments are those of :class:`ModelSpeedup`."""
    return ModelSpeedup(model, dummy_input, masks, **kwargs).speedup_model()
