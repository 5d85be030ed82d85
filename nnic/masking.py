"""Masks that stay applied while the user trains: a parametrization ``weight = original * mask``.

The mask is a ``torch.nn.utils.parametrize`` parametrization, so every read of ``module.weight`` is masked, the
gradient that reaches the stored parameter is zero where the mask is zero, and the stored parameter itself is
zeroed there when the mask is attached. An optimizer step (with momentum, weight decay, Adam...) therefore
cannot revive a pruned weight, and the module keeps its class, so user code that checks ``isinstance`` or
reads ``.weight`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

Masks = dict[str, dict[str, torch.Tensor | None]]


class ParameterMask(nn.Module):
    """Parametrization multiplying a parameter by a fixed 0/1 mask (stored as a bool buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().bool())

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.mask


def prunable_parameters(module: nn.Module) -> list[str]:
    """The module's own weight parameters (``weight``, ``in_proj_weight``...): what a weight pruner masks."""
    names = _original_names(module)
    return [n for n in names if n.endswith("weight")]


def _original_names(module: nn.Module) -> list[str]:
    direct = [n for n, _ in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        direct += list(module.parametrizations.keys())
    return direct


def parameter(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor behind ``module.<name>``: the parametrization's original if there is one."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def attach_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` from now on, and zero the stored values where the mask is zero.

    Most of the time (some 0.15 ms of 0.25 ms a parameter) is torch's ``register_parametrization``: the
    generated class, the parametrization list and its modules (docs/performance/pruning-depth.md)."""
    plist = module.parametrizations[name] if parametrize.is_parametrized(module, name) else None
    target = getattr(module, name) if plist is None else plist.original
    mask = mask.to(device=target.device, dtype=torch.bool)
    existing = None if plist is None else next((p for p in plist if isinstance(p, ParameterMask)), None)
    if existing is not None:
        existing.mask = mask
    else:  # unsafe: no trial forward; the parametrization keeps ``target`` itself as its ``original``
        parametrize.register_parametrization(module, name, ParameterMask(mask), unsafe=True)
    with torch.no_grad():
        zero_masked_(target.data, mask)


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
    if not parametrize.is_parametrized(module, name):
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
    if not parametrize.is_parametrized(module):
        return []
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
    modules = dict(model.named_modules())
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict {{layer_name: {{param_name: mask}}}}, got {type(masks).__name__}")
    for layer, per_param in masks.items():
        if layer not in modules:
            import difflib

            close = difflib.get_close_matches(str(layer), list(modules), n=3)
            raise ValueError(
                f"masks[{layer!r}]: no such layer in {type(model).__name__}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
            )
        if not isinstance(per_param, Mapping):
            raise TypeError(f"masks[{layer!r}]: expected a dict {{param_name: mask}}, got {type(per_param).__name__}")
        module = modules[layer]
        params = _original_names(module)
        for pname, mask in per_param.items():
            if mask is None:
                continue
            where = f"masks[{layer!r}][{pname!r}]"
            if pname not in params:
                raise ValueError(f"{where}: {type(module).__name__} {layer!r} has no parameter {pname!r}; it has {params}")
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{where}: expected a tensor, got {type(mask).__name__}")
            shape = tuple(parameter(module, pname).shape)
            if tuple(mask.shape) != shape:
                raise ValueError(f"{where}: expected shape {shape} (the parameter's), got {tuple(mask.shape)}")
            if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"{where}: a mask holds only 0/1 (or True/False); found other values")
