"""The layers one-shot LLM algorithms compress, seen as ``y = x @ W.T + b`` with ``W`` of shape ``[out, in]``.

Two module types qualify: ``torch.nn.Linear`` (``W`` is its weight) and Hugging Face GPT-2's ``Conv1D``
(``y = x @ weight + bias``, so ``W`` is its weight *transposed*). ``Conv1D`` is recognised by class name and
attributes, so nnic never imports transformers for it. Masks and weights are read and written through
:func:`weight_matrix` / :func:`set_weight_matrix` / :func:`to_parameter_layout`, so the algorithms only see
``[out, in]`` matrices.
"""

from __future__ import annotations

import torch
from torch import nn

from nnic.selection import op_type
from nnic.masking import parameter

__all__ = ["check_supported", "in_features", "is_conv1d", "is_supported", "set_weight_matrix", "to_parameter_layout",
           "weight_matrix"]


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (GPT-2's projections): weight ``[in, out]``, attribute ``nf`` = out features."""
    return op_type(module) == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def check_supported(name: str, module: nn.Module) -> None:
    if not is_supported(module):
        raise TypeError(f"{name}: one-shot LLM algorithms compress Linear and Conv1D layers, got "
                        f"{op_type(module)}; exclude it from the config_list")


def _stored(module: nn.Module) -> torch.Tensor:
    # The tensor behind the weight: under a pruning mask, the parametrization's original.
    return parameter(module, "weight")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """A float32 copy of the effective weight as ``[out, in]``."""
    w = module.weight.detach().float()
    return (w.t() if is_conv1d(module) else w).clone()


def in_features(module: nn.Module) -> int:
    return int(module.weight.shape[0] if is_conv1d(module) else module.weight.shape[1])


def to_parameter_layout(module: nn.Module, m: torch.Tensor) -> torch.Tensor:
    """An ``[out, in]`` tensor (weight or mask) in the layout of the module's weight parameter."""
    return m.t().contiguous() if is_conv1d(module) else m


def set_weight_matrix(module: nn.Module, w: torch.Tensor) -> None:
    """Write an ``[out, in]`` matrix into the module's stored weight (its dtype and device kept)."""
    stored = _stored(module)
    with torch.no_grad():
        stored.copy_(to_parameter_layout(module, w).to(stored.dtype))
