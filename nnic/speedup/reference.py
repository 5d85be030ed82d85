"""The masked model's output, to verify a speedup against, without the work its zeros make pointless.

Why: speedup verifies its result against the masked model's output on the dummy input, and after a value-free
propagation nothing has run the masked model yet: verification runs it, a dense forward over weights whose
pruned rows are zero, on activations whose pruned channels are zero. On ResNet-50 and ConvNeXt that forward was
a third of the whole prune and speedup. Here the large convolutions and linear layers compute only the output
channels whose weights are not all zero, from the input channels that are not all zero, and fill the others with
their bias: the same sums over the same nonzero terms. Only exact zeros are skipped, and they are found on the
weights and activations themselves, never taken from the analysis being verified, so the check is as strong as
the dense forward's (the sums' order may differ: rounding, far inside the verification's tolerance). Small layers
run as they are: finding their zeros costs more than computing them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Layers below this many multiply-adds (16M) run dense: on RegNetX-400MF, MobileNetV3 and EfficientNet-B0 the skipping
# of every layer made the forward slower (each layer's search for zeros and gathers cost more than it saved).
MIN_MACS = 1 << 24
# Skip only when at most this share of the dense multiply-adds is left to compute (and some is: a layer whose
# weights or inputs are all zero runs dense, which gives its output's shape without a formula of its own).
MAX_LIVE_SHARE = 0.75


def _live(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Per index along ``dim``: whether any element there is nonzero (NaN counts as nonzero). Two reductions,
    without the copy that ``abs`` or a bool tensor would make."""
    other = tuple(d for d in range(t.dim()) if d != dim)
    return (t.amax(dim=other) != 0) | (t.amin(dim=other) != 0)


def _on_live(module: nn.Module, x: torch.Tensor, dim: int, dense: Callable[..., torch.Tensor],
             macs: int) -> torch.Tensor:
    """``dense(x, weight, bias)``, the layer's product with its channels along ``dim`` of ``x`` and of the output,
    computed on the live part only when the layer is large (``macs``) and enough of it is zero (module docstring):
    the live weight rows from the live input channels, the other outputs filled with their bias."""
    w, bias = module.weight, module.bias
    if macs < MIN_MACS:
        return dense(x, w, bias)
    rows, cols = _live(w, 0), _live(x, dim)
    n_rows, n_cols = int(rows.sum()), int(cols.sum())
    if not (n_rows and n_cols) or n_rows * n_cols > MAX_LIVE_SHARE * w.shape[0] * w.shape[1]:
        return dense(x, w, bias)
    rows_at, cols_at = rows.nonzero().squeeze(1), cols.nonzero().squeeze(1)
    y = dense(x.index_select(dim, cols_at), w.index_select(0, rows_at).index_select(1, cols_at),
              None if bias is None else bias.index_select(0, rows_at))
    shape = (*y.shape[:dim], w.shape[0], *y.shape[dim + 1:])
    if bias is None:
        out = y.new_zeros(shape)
    else:  # all-zero weight rows output their bias
        view = [1] * len(shape)
        view[dim] = -1
        out = bias.detach().to(y.dtype).reshape(view).expand(shape).clone()
    return out.index_copy_(dim, rows_at, y)


def _sparse_conv(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    w = module.weight
    if x.dim() != 4 or x.dtype != w.dtype or not x.is_floating_point():
        return module._conv_forward(x, w, module.bias)
    out_hw = x.shape[2] * x.shape[3] // (module.stride[0] * module.stride[1])
    return _on_live(module, x, 1, module._conv_forward, x.shape[0] * out_hw * w.numel())


def _sparse_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = module.weight
    if x.dim() < 1 or x.dtype != w.dtype or not x.is_floating_point():
        return F.linear(x, w, module.bias)
    return _on_live(module, x, x.dim() - 1, F.linear, x.numel() // max(x.shape[-1], 1) * w.numel())


@contextlib.contextmanager
def skipping_zeros(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> Iterator[None]:
    """Within the block, ``model``'s Conv2d (ungrouped) and Linear layers, exact types only, skip the work on
    all-zero weight rows and all-zero input channels (see the module docstring); their outputs are the dense
    ones up to rounding. Hooks still run: only each layer's ``forward`` is replaced, and put back after.
    ``modules``: the model's modules, where the caller has them already (else ``model.modules()``)."""
    patched = []
    for m in model.modules() if modules is None else modules:
        if "forward" in m.__dict__:  # a forward of its own already (patched by someone): leave it
            continue
        if type(m) is nn.Conv2d and m.groups == 1:
            m.forward = functools.partial(_sparse_conv, m)
        elif type(m) is nn.Linear:
            m.forward = functools.partial(_sparse_linear, m)
        else:
            continue
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def masked_output(model: nn.Module, args: tuple, kwargs: dict, modules: Iterable[nn.Module] | None = None) -> object:
    """``model(*args, **kwargs)`` without gradients, its zeros skipped (:func:`skipping_zeros`; ``modules`` as
    there)."""
    with torch.no_grad(), skipping_zeros(model, modules):
        return model(*args, **kwargs)


__all__ = ["MAX_LIVE_SHARE", "MIN_MACS", "masked_output", "skipping_zeros"]
