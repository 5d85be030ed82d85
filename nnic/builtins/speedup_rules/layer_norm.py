"""LayerNorm over the channel dimension (channels-last blocks: ConvNeXt, and torchvision's ``LayerNorm2d``),
and the module that replaces it when channels go.

A LayerNorm that normalises over the channels mixes them through its mean and variance, so removing a channel
changes every other channel's output, unless the removed channel is exactly zero whatever the input: then the
statistics over the original count are known from the kept channels alone (the zeros add nothing to the sum and
``mean**2`` each to the squared deviations). :class:`PrunedLayerNorm` computes exactly that, so the pruned model
equals the masked one. A channel can go when its input is zero for every input and its LayerNorm weight is zero
(its output is then the constant bias, folded into the next layer or zero too); anything else keeps it.
"""

from __future__ import annotations

import torch
from torch import nn

from nnic.channels.graph import Call, Spec
from nnic.speedup.rules import Rule, slice_param


class PrunedLayerNorm(nn.Module):
    """LayerNorm over ``num_features`` kept channels of an original ``full_features``, at dimension ``dim``
    (``-1``: channels last, as ``nn.LayerNorm``; ``1``: channels first, as ``LayerNorm2d``); the removed channels
    were exactly zero, and the statistics are those over all ``full_features``."""

    def __init__(self, num_features: int, full_features: int, dim: int = -1, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if not 0 < num_features <= full_features:
            raise ValueError(f"PrunedLayerNorm: expected 0 < num_features <= full_features, got {num_features} "
                             f"and {full_features}")
        if dim not in (-1, 1):
            raise ValueError(f"PrunedLayerNorm: dim must be -1 or 1, got {dim}")
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.full_features, self.dim, self.eps = num_features, full_features, dim, eps
        self.weight = nn.Parameter(torch.ones(num_features, **kw)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **kw)) if elementwise_affine and bias else None

    def manifest_attrs(self) -> dict:
        return {"num_features": self.num_features, "full_features": self.full_features, "dim": self.dim,
                "eps": self.eps, "elementwise_affine": self.weight is not None, "bias": self.bias is not None}

    @classmethod
    def from_manifest(cls, attrs: dict) -> PrunedLayerNorm:
        return cls(**attrs)

    def extra_repr(self) -> str:
        return (f"{self.num_features} of {self.full_features}, dim={self.dim}, eps={self.eps}, "
                f"elementwise_affine={self.weight is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dim
        mean = x.sum(d, keepdim=True) / self.full_features
        diff = x - mean
        missing = self.full_features - self.num_features
        var = (diff.square().sum(d, keepdim=True) + missing * mean.square()) / self.full_features
        y = diff * torch.rsqrt(var + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 1 - d) if d >= 0 else (-1,)
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y


def _layer_norm_2d() -> tuple[type, ...]:
    try:
        from torchvision.models.convnext import LayerNorm2d  # torchvision is optional
    except Exception:
        return ()
    return (LayerNorm2d,)


class LayerNormRule(Rule):
    """``nn.LayerNorm`` (channels last), torchvision's ``LayerNorm2d`` (channels first) and
    :class:`PrunedLayerNorm`: over the channel dimension, zero channels with a zero weight can go (see the
    module docstring); over other dimensions the channels pass and are kept. ``nn.RMSNorm`` keeps its
    channels."""

    name = "torch.nn.layernorm"
    shape_attrs = ("num_features",)
    shrink_in_place = False  # its shrink replaces the tensors it slices
    value_free = True

    def __init__(self) -> None:
        self.channels_first = _layer_norm_2d()
        self.targets = (nn.LayerNorm, nn.RMSNorm, PrunedLayerNorm, *self.channels_first)

    def _channel_dim(self, module: nn.Module, x: torch.Tensor) -> int | None:
        """The one dimension ``module`` normalises over, or ``None`` if it normalises over several."""
        if isinstance(module, PrunedLayerNorm):
            return module.dim % x.ndim
        if len(module.normalized_shape) != 1:
            return None
        return 1 if isinstance(module, self.channels_first) else x.ndim - 1

    def propagate(self, call: Call) -> None:
        m, spec, x = call.module, call.spec(0), call.value(0)
        if spec is None:
            return
        d = self._channel_dim(m, x)
        if isinstance(m, nn.RMSNorm) or d is None or d != spec.dim:
            normalised = range(x.ndim - len(getattr(m, "normalized_shape", (1,))), x.ndim)
            if spec.dim in normalised or d == spec.dim:
                call.pin(spec, f"{call.name} normalises over the channel dimension")
                return
            call.set_output(spec.with_const(None) if call.state.value_free else spec)
            return
        ids = call.slot("c", x.shape[d])
        call.couple(ids, spec.ids)
        zero = call.zero_dead(x, spec, d)
        call.sink(ids, zero, slot="c")
        w = getattr(m, "weight", None)
        weight_zero = (w.detach() == 0).cpu() if w is not None else torch.zeros(len(ids), dtype=torch.bool)
        dead = zero & weight_zero
        const = None
        if call.state.value_free and bool(dead.any()):  # a zero weight: the bias there, whatever the input
            b = getattr(m, "bias", None)
            const = b.detach().double().cpu() if b is not None else torch.zeros(len(ids), dtype=torch.float64)
            const = torch.where(dead, const, torch.full_like(const, float("nan")))
        call.set_output(Spec(d, spec.ids, dead, const))

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        index = keep.get("c")
        if index is None:
            return module
        if isinstance(module, PrunedLayerNorm):
            full, dim = module.full_features, module.dim
        else:
            full, dim = module.normalized_shape[0], 1 if isinstance(module, self.channels_first) else -1
        w = module.weight
        new = PrunedLayerNorm(int(index.numel()), full, dim, module.eps, w is not None,
                              getattr(module, "bias", None) is not None,
                              device=None if w is None else w.device, dtype=None if w is None else w.dtype)
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                slice_param(module, name, index, 0)
                setattr(new, name, getattr(module, name))
        return new
