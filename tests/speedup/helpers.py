"""Shared helpers for speedup tests: random channel masks and the equality check against the masked model."""

from __future__ import annotations

import copy

import torch
from torch import nn

import nnic
from nnic.measure import count_flops, count_params

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def channel_masks(model: nn.Module, fraction: float = 0.5, seed: int = 0, types=PRODUCERS, skip=()) -> dict:
    """Random output-channel masks (whole weight rows) on every layer of ``types``."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, m in model.named_modules():
        if type(m) not in types or name in skip:
            continue
        out_dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
        n = m.weight.shape[out_dim]
        drop = torch.randperm(n, generator=g)[: int(n * fraction)]
        mask = torch.ones_like(m.weight, dtype=torch.bool)
        mask.index_fill_(out_dim, drop, False)
        masks[name] = {"weight": mask}
        if m.bias is not None and out_dim == 0:
            bias = torch.ones_like(m.bias, dtype=torch.bool)
            bias[drop] = False
            masks[name]["bias"] = bias
    return masks


def masked_output(model: nn.Module, x, masks: dict):
    """The masked model's output: a deep copy with masked weights zeroed, in eval mode."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for layer, per in masks.items():
            mod = ref.get_submodule(layer)
            for p, mask in per.items():
                if mask is not None:
                    getattr(mod, p).mul_(mask.to(getattr(mod, p).dtype))
        return run(ref, x)


def run(model, x):
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, (tuple, list)):
            return model(*x)
        return model(x)


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, (a.shape, b.shape)
        scale = float(b.abs().max()) if b.numel() else 0.0
        assert float((a - b).abs().max()) <= atol + rtol * scale, float((a - b).abs().max())
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], rtol, atol)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, rtol, atol)


def speedup_and_check(model, x, masks, **kw):
    """Speed up in place, check the output equals the masked model's; returns (params before, after)."""
    model.eval()
    expected = masked_output(model, x, masks)
    before = count_params(model)
    out = nnic.speedup_model(model, x, masks, **kw)
    assert out is model
    assert_close(run(model, x), expected)
    return before, count_params(model)


__all__ = ["assert_close", "channel_masks", "count_flops", "count_params", "masked_output", "run",
           "speedup_and_check"]
