"""``SparseConv2d``: a 2-D convolution that stores and computes only its non-zero weights, as a sparse matmul.

A convolution is a matmul of its weight ``[out, C·kh·kw]`` with the input's patches (im2col: one row of
``C·kh·kw`` values per output pixel; a 1x1 convolution's patches are the input's pixels, no copy of neighbours).
The weight is held by a :class:`~nnic.sparse.SparseLinear` (``self.linear``: bitmask or N:M, float32 or int8
values), so the kernels, the CUDA fallback, the storage form and ``quantization_speedup``'s sparse int8 lowering
(of ``"<conv>.linear"``) are the Linear layer's; this module only adds the patches (``nnic.kernels.twins.im2col``,
K ordered (c, dy, dx) as ``Conv2d.weight.flatten(1)``) and the NCHW layout of the output. ``groups == 1`` and
zero padding only: other convolutions stay dense (``sparsify`` records why).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnic import kernels
from nnic.sparse.modules import SparseLinear

__all__ = ["SparseConv2d", "unsupported_conv"]


def unsupported_conv(conv: nn.Conv2d) -> str | None:
    """Why a ``Conv2d`` has no sparse form (None: it has one)."""
    if conv.groups != 1:
        return f"groups = {conv.groups} (only groups = 1 runs as a sparse matmul)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return "padding other than explicit zeros"
    return None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SparseConv2d(nn.Module):
    """``conv2d(x, W, bias, stride, padding, dilation)`` (``groups == 1``) with ``W`` stored sparse in ``linear``.

    Build it with :meth:`from_conv`, or :meth:`from_linear` around a :class:`SparseLinear` whose weight is the
    convolution's ``[out, C·kh·kw]``. Input ``[N, C, H, W]`` or unbatched ``[C, H, W]``; output float32
    ``[N, out, Ho, Wo]`` (channels-last in memory) or ``[out, Ho, Wo]``.
    """

    def __init__(self, linear: SparseLinear, in_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), linear.out_features
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        if linear.in_features != self.in_channels * self.kernel_size[0] * self.kernel_size[1]:
            raise ValueError(f"SparseConv2d: the layer has {linear.in_features} inputs, expected in_channels x "
                             f"kernel = {self.in_channels} x {self.kernel_size[0]} x {self.kernel_size[1]}")
        self.linear = linear

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, nm: tuple[int, int] | None = None) -> SparseConv2d:
        """From a float ``nn.Conv2d`` (its effective weight), stored where non-zero (N:M along ``C·kh·kw``)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        why = unsupported_conv(conv)
        if why is not None:
            raise ValueError(f"SparseConv2d: {why}")
        w = conv.weight.detach().float().flatten(1)
        return cls.from_linear(SparseLinear.from_dense(w, conv.bias, nm=nm), conv)

    @classmethod
    def from_linear(cls, linear: SparseLinear, conv: nn.Conv2d) -> SparseConv2d:
        """Around ``linear`` (the weight ``[out, C·kh·kw]``), with ``conv``'s geometry."""
        return cls(linear, conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    @property
    def layout(self) -> str:
        """The inner layer's: ``"csr"`` or ``"n:m"``."""
        return self.linear.layout

    def dense_weight(self) -> torch.Tensor:
        """The dense float32 ``[out, C, kh, kw]`` weight."""
        return self.linear.dense_weight().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def stored_mask(self) -> torch.Tensor:
        """Bool ``[out, C, kh, kw]``: where a value is stored."""
        return self.linear.stored_mask().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def select(self, rows: torch.Tensor | None = None, channels: torch.Tensor | None = None) -> SparseConv2d:
        """A new layer with only output channels ``rows`` and input channels ``channels`` (sorted positions; None
        keeps all): what speedup does when channels around this layer are removed."""
        cols = None
        if channels is not None:
            taps = self.kernel_size[0] * self.kernel_size[1]
            cols = (channels.reshape(-1, 1) * taps + torch.arange(taps)).reshape(-1)
        linear = self.linear.select(rows, cols)
        in_channels = self.in_channels if channels is None else int(channels.numel())
        return SparseConv2d(linear, in_channels, self.kernel_size, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # unbatched, as Conv2d takes it
            return self.forward(x[None])[0]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d: expected input [N, {self.in_channels}, H, W] or [{self.in_channels}, "
                             f"H, W], got {list(x.shape)}")
        cols, ho, wo = kernels.twins.im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)
        y = self.linear(cols)
        return y.reshape(x.shape[0], ho, wo, self.out_channels).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ files
    @property
    def linear_attrs(self) -> dict[str, Any]:
        """The inner layer's manifest attributes (its buffers' sizes): loading builds it from them."""
        return self.linear.manifest_attrs()

    def manifest_attrs(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "linear_attrs": self.linear_attrs}

    @classmethod
    def from_manifest(cls, attrs: dict[str, Any]) -> SparseConv2d:
        return cls(SparseLinear.from_manifest(attrs["linear_attrs"]), attrs["in_channels"], attrs["kernel_size"],
                   attrs["stride"], attrs["padding"], attrs["dilation"])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")
