"""Masks that stay applied while the user trains: a parametrization ``weight = original * mask``.

The mask is a ``torch.nn.utils.parametrize`` parametrization, so every read of ``module.weight`` is masked, the
gradient that reaches the stored parameter is zero where the mask is zero, and the stored parameter itself is
zeroed there when the mask is attached. An optimizer step (with momentum, weight decay, Adam...) therefore
cannot revive a pruned weight, and the module keeps its class, so user code that checks ``isinstance`` or
reads ``.weight`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

Masks = dict[str, dict[str, torch.Tensor | None]]


class ParameterMask(nn.Module):
    """Parametrization multiplying a parameter by a fixed 0/1 mask (stored as a bool buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().bool())

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.mask


def is_parametrized(module: nn.Module, name: str | None = None) -> bool:
    """``torch.nn.utils.parametrize.is_parametrized``, answered first from the module's ``_modules``: torch's
    reads ``module.parametrizations`` through ``getattr``, which on the many modules without any goes through
    ``nn.Module.__getattr__`` and an ``AttributeError`` (some 2 us; speedup asks for every module, several times)."""
    return "parametrizations" in module._modules and parametrize.is_parametrized(module, name)


def prunable_parameters(module: nn.Module) -> list[str]:
    """The module's own weight parameters (``weight``, ``in_proj_weight``...): what a weight pruner masks."""
    names = _original_names(module)
    return [n for n in names if n.endswith("weight")]


def _original_names(module: nn.Module) -> list[str]:
    direct = [n for n, _ in module.named_parameters(recurse=False)]
    if is_parametrized(module):
        direct += list(module.parametrizations.keys())
    return direct


def parameter(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor behind ``module.<name>``: the parametrization's original if there is one."""
    found = _stored(module, name)
    if found is not None:
        return found
    if is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def _stored(module: nn.Module, name: str) -> torch.Tensor | None:
    """What :func:`parameter` gives, read from the modules' own dicts where it is a plain parameter or the
    original of a parametrization (each ``nn.Module.__getattr__`` on the way is some 2 us, and speedup checks
    every mask of a pruner's compressed model); ``None`` for anything else (buffers, properties, a
    ``parametrizations`` that is not torch's), which the caller reads the slow way."""
    plists = module._modules.get("parametrizations")
    if plists is None:
        return module._parameters.get(name)
    if type(plists) is not nn.ModuleDict:
        return None
    plist = plists._modules.get(name)
    if plist is None:  # another parameter of the module is parametrized, not this one
        return module._parameters.get(name)
    return plist._parameters.get("original") if type(plist) is parametrize.ParametrizationList else None


def attach_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` from now on, and zero the stored values where the mask is zero."""
    attach_masks(module, {name: mask})


def attach_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Mask each ``module.<name>`` of ``masks`` from now on, and zero the stored values where its mask is zero.

    A module without parametrizations yet, whose masked tensors are plain parameters, gets the structure torch's
    ``register_parametrization(module, name, ParameterMask(mask), unsafe=True)`` builds for each name, in that
    order (:func:`_parametrize_fresh`: built from templates, in half the time); anything else goes through
    torch's function, and a parameter already masked gets the new mask in place of the old one."""
    targets = []
    for name, mask in masks.items():
        plist = module.parametrizations[name] if is_parametrized(module, name) else None
        target = getattr(module, name) if plist is None else plist.original
        targets.append((name, target, mask.to(device=target.device, dtype=torch.bool), plist))
    if _fresh_ok(module, targets):
        _parametrize_fresh(module, [(name, target, mask) for name, target, mask, _ in targets])
    else:
        for name, target, mask, plist in targets:
            existing = None if plist is None else next((p for p in plist if isinstance(p, ParameterMask)), None)
            if existing is not None:
                existing.mask = mask
            else:  # unsafe: no trial forward; the parametrization keeps ``target`` itself as its ``original``
                parametrize.register_parametrization(module, name, ParameterMask(mask), unsafe=True)
    with torch.no_grad():
        for _, target, mask, _ in targets:
            zero_masked_(target.data, mask)


# Attaching masks the fast way. torch's ``register_parametrization`` costs some 60 us a parameter (a
# ``ParametrizationList`` and a ``ModuleDict`` constructed through ``Module.__init__`` and checked registrations,
# the identity ``set_`` of the original onto itself, ``hasattr`` probes): with the removal, some 30 ms of
# RegNetX-400MF's 230 ms ``compress()`` + ``speedup_model`` (docs/performance/pruning-depth.md). The fast path
# builds the same objects: torch's own generated class and property (``_inject_new_class``,
# ``_inject_property``: one class per module, as torch makes, so that torch's removal of one module's
# parametrization never touches another's), and modules copied from a freshly constructed template of each class
# (a module's state is its ``__dict__``; its containers are copied, so nothing is shared). It is taken only where
# the result is the same: torch has those two functions, no global module, parameter or buffer registration hook
# would have seen the registrations, the module has no parametrization (nor any attribute named
# ``parametrizations``), and each masked tensor is a plain parameter. tests/test_mask_attachment.py compares
# the two structures object by object.
_TEMPLATES: dict[type, tuple[dict, tuple[str, ...]]] = {}


def _template(cls: type) -> tuple[dict, tuple[str, ...]]:
    """A freshly constructed ``cls``'s ``__dict__`` and the names of the containers in it."""
    found = _TEMPLATES.get(cls)
    if found is None:
        if cls is parametrize.ParametrizationList:
            module = cls([nn.Identity()], nn.Parameter(torch.zeros(0)), unsafe=True)
        elif cls is ParameterMask:
            module = cls(torch.zeros(0, dtype=torch.bool))
        else:
            module = cls()
        state = dict(module.__dict__)
        found = state, tuple(k for k, v in state.items() if isinstance(v, (dict, set, list)))
        _TEMPLATES[cls] = found
    return found


def _fresh(cls: type, **given: Any) -> nn.Module:
    """A module of ``cls`` as its constructor leaves it (the template's state, every container copied), with
    the ``given`` entries of its state instead (containers of the template's types)."""
    state, containers = _template(cls)
    obj = cls.__new__(cls)
    own = obj.__dict__
    own.update(state)
    for k in containers:
        own[k] = type(state[k])(given[k]) if k in given else state[k].copy()
    return obj


def _fresh_ok(module: nn.Module, targets: list) -> bool:
    """Whether :func:`_parametrize_fresh` builds what torch's function would for these ``(name, tensor, mask,
    existing parametrizations)`` (see above)."""
    return (_HAS_INJECT and _plain_registration(type(module))
            and "parametrizations" not in module._modules and "parametrizations" not in vars(module)
            and not hasattr(type(module), "parametrizations") and not any(plist is not None for *_, plist in targets)
            and all(type(module._parameters.get(name)) is nn.Parameter and module._parameters[name] is target
                    for name, target, *_ in targets)
            and len({name for name, *_ in targets}) == len(targets)
            and not getattr(torch_module, "_global_module_registration_hooks", True)
            and not getattr(torch_module, "_global_parameter_registration_hooks", True)
            and not getattr(torch_module, "_global_buffer_registration_hooks", True))


_HAS_INJECT = hasattr(parametrize, "_inject_new_class") and hasattr(parametrize, "_inject_property")


def _plain_registration(cls: type) -> bool:
    """Whether ``cls`` registers, sets and deletes attributes as ``nn.Module`` does (torch's functions go through
    a subclass's own ``__setattr__``, ``__delattr__`` or ``register_parameter``; the fast paths do not)."""
    return (cls.__setattr__ is nn.Module.__setattr__ and cls.__delattr__ is nn.Module.__delattr__
            and cls.register_parameter is nn.Module.register_parameter)


def _parametrize_fresh(module: nn.Module, targets: list[tuple[str, nn.Parameter, torch.Tensor]]) -> None:
    """What ``register_parametrization(module, name, ParameterMask(mask), unsafe=True)`` does for each target in
    turn, on a module without parametrizations (see above)."""
    if not targets:
        return
    parametrize._inject_new_class(module)
    plists = _fresh(nn.ModuleDict)
    module._modules["parametrizations"] = plists
    for name, original, mask in targets:
        pm = _fresh(ParameterMask, _buffers={"mask": mask.detach()})
        plist = _fresh(parametrize.ParametrizationList, _modules={"0": pm}, _parameters={"original": original})
        del module._parameters[name]
        parametrize._inject_property(module, name)
        plists._modules[name] = plist


# Below this many elements torch's ``masked_fill_`` is cheaper than the Rust kernel's call (its argument checks
# and numpy views cost some 20 us a call, a pruner's biases and norms are tiny); above it the kernel is faster.
_KERNEL_MIN = 4096


def zero_masked_(t: torch.Tensor, mask: torch.Tensor) -> None:
    """``t[~mask] = 0`` in place (``mask``: bool, ``t``'s shape; zeroed entries become +0.0): the Rust kernel
    for large float32 tensors, torch for small ones, half precision and the rest. What attaching a mask does
    to the stored values, and what speedup does with masks given to it."""
    if t.dtype == torch.float32 and t.numel() >= _KERNEL_MIN:
        from nnic import kernels

        kernels.apply_mask_(t, mask)
    else:
        t.masked_fill_(~mask, 0)


def _masks_of(module: nn.Module, name: str) -> list[ParameterMask]:
    if not is_parametrized(module, name):
        return []
    return [p for p in module.parametrizations[name] if isinstance(p, ParameterMask)]


def current_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The mask in force on ``module.<name>`` (attached by :func:`attach_mask`), or ``None``."""
    found = _masks_of(module, name)
    return found[0].mask if found else None


def fold_masks(module: nn.Module) -> list[tuple[str, list[torch.Tensor]]]:
    """Remove the module's masks, leaving plain parameters with the masks multiplied in; returns the masks
    folded, ``[(parameter, [mask, ...]), ...]``.

    Other parametrizations on the same parameter (a quantizer's fake-quant, say) are kept.
    """
    if not is_parametrized(module):
        return []
    if only_masks_test()(module):
        return fold_only_masks(module)
    folded = []
    for name, plist in list(module.parametrizations.items()):
        masks = [p.mask for p in plist if isinstance(p, ParameterMask)]
        if not masks:
            continue
        with torch.no_grad():
            for mask in masks:
                zero_masked_(plist.original.data, mask)
        if len(masks) == len(plist):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        else:
            for i in reversed(range(len(plist))):
                if isinstance(plist[i], ParameterMask):
                    del plist[i]
        folded.append((name, masks))
    return folded


def only_masks_test() -> Callable[[nn.Module], bool]:
    """A test of whether a module's parametrizations are masks only, one on each plain parameter, as
    :func:`_parametrize_fresh` (or torch's function, called as :func:`attach_masks` calls it) leaves them, and
    torch's ``remove_parametrizations`` would leave plain parameters behind without any registration hook: the
    modules :func:`fold_masks` folds with :func:`fold_only_masks`. The part that is the same for every module is
    answered once, here, for a caller that asks of every module of a model in one walk (speedup)."""
    return _mask_structure_only if _plain_unregistration() else _never


def _plain_unregistration() -> bool:
    """The part of :func:`only_masks_test` that is the same for every module: torch has the functions whose classes
    :func:`fold_only_masks` undoes, and no global parameter registration hook would see the originals registered
    again."""
    return _HAS_INJECT and not getattr(torch_module, "_global_parameter_registration_hooks", True)


def _mask_structure_only(module: nn.Module) -> bool:
    """The part of :func:`only_masks_test` that is the module's own (asked module by module where the rest holds)."""
    plists = module._modules.get("parametrizations")
    return (type(plists) is nn.ModuleDict and len(type(module).__bases__) == 1
            and _plain_registration(type(module))
            and all(type(plist) is parametrize.ParametrizationList and len(plist._modules) == 1
                    and type(plist._modules.get("0")) is ParameterMask and plist.is_tensor
                    and type(plist._parameters.get("original")) is nn.Parameter and not plist._buffers
                    for plist in plists._modules.values()))


def _never(module: nn.Module) -> bool:
    return False


def fold_only_masks(module: nn.Module) -> list[tuple[str, list[torch.Tensor]]]:
    """``remove_parametrizations(module, name, leave_parametrized=False)`` for each parametrized name in turn,
    the originals zeroed under their masks first, on a module :func:`only_masks_test` accepts: the same result (the
    originals registered again, last, in that order; the generated class's properties deleted; the module's
    own class back), without torch's checks and registrations, some 25 us a parameter.

    The parametrization containers (the ``ModuleDict``, its ``ParametrizationList``s and their masks) are
    detached whole and left as they were, where torch's function empties them one by one: nothing reads them
    afterwards, and speedup's snapshot then need not record them to put them back (it restores the module's
    own ``_modules``, which still holds them: :class:`nnic.speedup.api._ModuleTree`)."""
    cls, plists = type(module), module._modules["parametrizations"]
    folded = []
    with torch.no_grad():
        for name, plist in plists._modules.items():
            mask, original = plist._modules["0"].mask, plist._parameters["original"]
            zero_masked_(original.data, mask)
            delattr(cls, name)
            module._parameters[name] = original
            folded.append((name, [mask]))
    del module._modules["parametrizations"]
    object.__setattr__(module, "__class__", cls.__bases__[0])  # what nn.Module.__setattr__ does with it, in 1/3
    return folded


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a model without parametrizations would have, with every parametrization applied.

    Masks are folded into weights (and fake-quantization into quantized weights), under the plain keys
    (``fc.weight``), so the result loads into a fresh, unwrapped copy of the architecture.
    """
    out: dict[str, torch.Tensor] = {}
    marker = "parametrizations."
    for key, value in model.state_dict().items():
        head, sep, rest = key.partition(marker) if key.startswith(marker) else key.partition("." + marker)
        if not sep:
            out[key] = value
            continue
        pname, _, tail = rest.partition(".")
        if tail != "original":
            continue  # a parametrization's own buffer, e.g. the mask
        module = model.get_submodule(head)
        with torch.no_grad():
            out[f"{head}.{pname}" if head else pname] = getattr(module, pname).detach().clone()
    return out


def check_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
    """Raise a clear error for masks that do not fit the model: unknown layer, parameter, shape or values."""
    from nnic.channels.tracer import submodule

    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict {{layer_name: {{param_name: mask}}}}, got {type(masks).__name__}")
    modules: dict[str, nn.Module] | None = None  # every name, built only for a name that is not found
    for layer, per_param in masks.items():
        try:
            module = submodule(model, layer) if isinstance(layer, str) else None
        except AttributeError:
            module = None
        if module is None:
            modules = dict(model.named_modules()) if modules is None else modules
            module = modules.get(layer)
        if module is None:
            import difflib

            close = difflib.get_close_matches(str(layer), list(modules), n=3)
            raise ValueError(
                f"masks[{layer!r}]: no such layer in {type(model).__name__}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
            )
        if not isinstance(per_param, Mapping):
            raise TypeError(f"masks[{layer!r}]: expected a dict {{param_name: mask}}, got {type(per_param).__name__}")
        for pname, mask in per_param.items():
            if mask is None:
                continue
            where = f"masks[{layer!r}][{pname!r}]"
            stored = _stored(module, pname)
            if stored is None and not is_parametrized(module, pname):
                raise ValueError(f"{where}: {type(module).__name__} {layer!r} has no parameter {pname!r}; it has "
                                 f"{_original_names(module)}")
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{where}: expected a tensor, got {type(mask).__name__}")
            shape = tuple((parameter(module, pname) if stored is None else stored).shape)
            if tuple(mask.shape) != shape:
                raise ValueError(f"{where}: expected shape {shape} (the parameter's), got {tuple(mask.shape)}")
            if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"{where}: a mask holds only 0/1 (or True/False); found other values")
