"""The torch baselines that more than one benchmark compares nnic with, built one way for all of them."""

from __future__ import annotations

import torch


def dynamic_linear(w: torch.Tensor, engine: str) -> torch.nn.Module:
    """``quantize_dynamic``'s Linear for ``w`` (float ``[N, K]``) on the quantized ``engine``: per-channel symmetric
    int8 codes, as nnic's, no bias. The engine is selected here, where the weight is packed for it; a call must
    select it again when another engine ran since."""
    import torch.ao.nn.quantized.dynamic as nnqd

    torch.backends.quantized.engine = engine
    scale = (w.abs().amax(dim=1) / 127).double()
    q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.int64), 0, torch.qint8)
    lin = nnqd.Linear(w.shape[1], w.shape[0])
    lin.set_weight_bias(q, None)
    return lin
