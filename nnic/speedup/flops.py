"""Parameter and multiply-accumulate counts, for reports, tests and the benchmark."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nnic.speedup.capture import split_dummy_input


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(m: nn.Module, inputs: tuple, out: Any) -> int:
    y = out[0] if isinstance(out, tuple) else out
    if isinstance(m, nn.modules.conv._ConvNd):
        k = math.prod(m.kernel_size)
        if m.transposed:
            return inputs[0].numel() * (m.out_channels // m.groups) * k
        return y.numel() * (m.in_channels // m.groups) * k
    if isinstance(m, nn.Linear):
        return y.numel() * m.in_features
    if isinstance(m, nn.Bilinear):
        return y.numel() * m.in1_features * m.in2_features
    if isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "PrunedMultiheadAttention":
        q, k = inputs[0], inputs[1]
        if isinstance(m, nn.MultiheadAttention):
            inner, qd, kd, vd = m.embed_dim, m.embed_dim, m.kdim, m.vdim
            od = m.embed_dim
        else:
            inner = m.num_heads * m.head_dim
            qd, kd, vd, od = m.q_proj.in_features, m.k_proj.in_features, m.v_proj.in_features, m.out_proj.out_features
        lq, lk = q.numel() // q.shape[-1], k.numel() // k.shape[-1]
        seq_k = k.shape[1] if getattr(m, "batch_first", False) else k.shape[0]
        return lq * inner * qd + lk * inner * (kd + vd) + 2 * lq * seq_k * inner + lq * inner * od
    return 0


def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """Multiply-accumulates of convolutions, linear layers and attention for one forward on ``dummy_input``."""
    total = 0
    hooks = []

    def hook(m, inputs, out):
        nonlocal total
        total += _macs(m, inputs, out)

    inside_attention = {id(c) for m in model.modules() if type(m).__name__ == "PrunedMultiheadAttention"
                        for c in m.modules() if c is not m}  # its projections are counted by the attention
    for m in model.modules():
        if id(m) in inside_attention:
            continue
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.MultiheadAttention)) or \
                type(m).__name__ == "PrunedMultiheadAttention":
            hooks.append(m.register_forward_hook(hook))
    args, kwargs = split_dummy_input(model, dummy_input)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return total
