"""RMSNorm over a pruned hidden size: the speedup rule of transformers' LLaMA, Qwen2 and Mistral RMSNorms, the
module that replaces them when hidden channels go, and its rewrite into the form a transformers config holds.

RMSNorm divides by the root mean square over *all* ``n`` hidden channels. When the masked model's removed
channels are exactly zero (the embedding columns and every residual write, ``o_proj``/``down_proj`` rows and
biases, are masked), they add nothing to the sum of squares but still count in the mean: the pruned norm must
keep dividing by ``n``, not by the ``k`` channels it keeps. :class:`PrunedRMSNorm` does exactly that, as nnic's
``PrunedLayerNorm`` does for LayerNorm.

A transformers config cannot say "divide by ``n``", but it can say the same function: with ``m_k`` the mean of
squares over the kept channels, ``sum/n = (k/n) m_k``, so

    w x / sqrt(sum/n + eps) = w x / sqrt((k/n) (m_k + eps n/k)) = (w sqrt(n/k)) x / sqrt(m_k + eps n/k),

an ordinary RMSNorm over ``k`` channels with weight ``w sqrt(n/k)`` and epsilon ``eps n/k`` (equal in exact
arithmetic; in float32 within a few units in the last place). :func:`standard_norms` performs that rewrite, after
which ``pruned_config`` writes ``hidden_size = k`` and ``rms_norm_eps = eps n/k``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnic.channels import Spec
from nnic.selection import replace_module
from nnic.speedup.rules import Rule, slice_param
from nnic_transformers.layouts import loaded_class
from nnic_transformers.rules import _lazy_targets

# The RMSNorm classes (module, class) whose forward is ``w * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype)``.
_RMS_NORMS = (("transformers.models.llama.modeling_llama", "LlamaRMSNorm"),
              ("transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm"),
              ("transformers.models.mistral.modeling_mistral", "MistralRMSNorm"))


def rms_norm_classes() -> tuple[type, ...]:
    """The transformers RMSNorm classes imported so far (never imports transformers)."""
    found = (loaded_class(module, name) for module, name in _RMS_NORMS)
    return tuple(cls for cls in found if cls is not None)


class PrunedRMSNorm(nn.Module):
    """transformers' RMSNorm over ``num_features`` kept channels of an original ``full_features``: the removed
    channels were exactly zero, so the mean of squares is the kept channels' sum of squares over
    ``full_features``. Computed in float32 and cast back, like the LLaMA/Qwen2/Mistral norms."""

    def __init__(self, num_features: int, full_features: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        if not 0 < num_features <= full_features:
            raise ValueError(f"PrunedRMSNorm: expected 0 < num_features <= full_features, got {num_features} and "
                             f"{full_features}")
        if not (isinstance(eps, float) and eps >= 0):
            raise ValueError(f"PrunedRMSNorm: eps must be a float >= 0, got {eps!r}")
        self.num_features, self.full_features, self.eps = num_features, full_features, eps
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))

    def manifest_attrs(self) -> dict:
        return {"num_features": self.num_features, "full_features": self.full_features, "eps": self.eps}

    @classmethod
    def from_manifest(cls, attrs: dict) -> PrunedRMSNorm:
        return cls(**attrs)

    def extra_repr(self) -> str:
        return f"{self.num_features} of {self.full_features}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).sum(-1, keepdim=True) / self.full_features
        h = h * torch.rsqrt(variance + self.eps)
        return self.weight * h.to(dtype)


class RMSNormRule(Rule):
    """The RMSNorms of LLaMA, Qwen2 and Mistral, and :class:`PrunedRMSNorm`: over the hidden (last) dimension, a
    channel can go when its input is zero for every input (its output is then zero whatever its weight); the
    module becomes a :class:`PrunedRMSNorm` that keeps the original divisor. Channels along another dimension
    pass through."""

    name = "transformers.rms_norm"
    shape_attrs = ("num_features",)
    targets = _lazy_targets(lambda: (*rms_norm_classes(), PrunedRMSNorm))
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def propagate(self, call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        if spec.dim != x.ndim - 1:
            call.set_output(spec)
            return
        ids = call.slot("c", x.shape[-1])
        call.couple(ids, spec.ids)
        zero = call.zero_dead(x, spec)
        call.sink(ids, zero, slot="c")
        call.set_output(Spec(spec.dim, spec.ids, zero))

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        index = keep.get("c")
        if index is None:
            return module
        if isinstance(module, PrunedRMSNorm):
            full, eps = module.full_features, module.eps
        else:
            full, eps = module.weight.shape[0], float(module.variance_epsilon)
        w = module.weight
        new = PrunedRMSNorm(int(index.numel()), full, eps, device=w.device, dtype=w.dtype)
        slice_param(module, "weight", index, 0)
        new.weight = module.weight
        return new


def standard_norms(model: nn.Module) -> nn.Module:
    """Replace every :class:`PrunedRMSNorm` of ``model`` (in place) by the model's own RMSNorm class over the kept
    channels, with weight ``w sqrt(n/k)`` and epsilon ``eps n/k``: the same function (module docstring) in the
    form ``save_pretrained`` + ``from_pretrained`` rebuild. Returns ``model``. Raises ``ValueError`` when the
    model's config family has no such class here, or when its norms would need different epsilons."""
    pruned = [(name, m) for name, m in model.named_modules() if isinstance(m, PrunedRMSNorm)]
    if not pruned:
        return model
    kind = type(getattr(model, "config", None)).__name__
    family = {"LlamaConfig": "LlamaRMSNorm", "Qwen2Config": "Qwen2RMSNorm", "MistralConfig": "MistralRMSNorm"}
    cls = next((c for c in rms_norm_classes() if c.__name__ == family.get(kind)), None)
    if cls is None:
        raise ValueError(f"standard_norms: no transformers RMSNorm class for a model with config {kind}; "
                         f"supported: {', '.join(family)} (save with nnic.speedup.save_pruned instead)")
    eps = {name: m.eps * m.full_features / m.num_features for name, m in pruned}
    if len({round(e, 15) for e in eps.values()}) != 1:
        listing = ", ".join(f"{n}: {e:.3g}" for n, e in list(eps.items())[:4])
        raise ValueError(f"standard_norms: the pruned norms would need different epsilons ({listing}); a "
                         f"transformers config holds one rms_norm_eps: save with nnic.speedup.save_pruned")
    with torch.no_grad():
        for name, m in pruned:
            new = cls(m.num_features, eps=eps[name])
            new.weight = nn.Parameter((m.weight.double() * math.sqrt(m.full_features / m.num_features)).to(
                m.weight.dtype), m.weight.requires_grad)
            new.train(m.training)
            replace_module(model, name, new)
    return model


__all__ = ["PrunedRMSNorm", "RMSNormRule", "rms_norm_classes", "standard_norms"]
