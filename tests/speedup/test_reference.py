"""The masked model's reference output for verification: large layers skip exact zeros of their weights and inputs,
and the output is the dense forward's up to rounding, wherever the zeros are."""

import pytest
import torch
from torch import nn

from nnic.speedup import reference
from nnic.speedup.reference import masked_output, skipping_zeros


def _zero_rows_and_inputs(seed: int, conv: bool, bias: bool, in_zero: float, out_zero: float):
    """A layer large enough to skip (over ``reference.MIN_MACS``) with a random share of all-zero weight rows and
    an input with a random share of all-zero channels."""
    g = torch.Generator().manual_seed(seed)
    if conv:
        layer = nn.Conv2d(64, 48, 3, padding=1, bias=bias)
        x = torch.randn(2, 64, 24, 24, generator=g)
        x[:, torch.rand(64, generator=g) < in_zero] = 0
    else:
        layer = nn.Linear(256, 192, bias=bias)
        x = torch.randn(4, 128, 256, generator=g)
        x[..., torch.rand(256, generator=g) < in_zero] = 0
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.weight[torch.rand(layer.weight.shape[0], generator=g) < out_zero] = 0
        if bias:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer, x


@pytest.mark.parametrize("conv", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("in_zero,out_zero", [(0.5, 0.5), (0.0, 0.6), (0.7, 0.0), (0.0, 0.0), (1.0, 0.5), (0.5, 1.0)])
def test_the_output_is_the_dense_one_wherever_the_zeros_are(conv, bias, seed, in_zero, out_zero):
    layer, x = _zero_rows_and_inputs(seed, conv, bias, in_zero, out_zero)
    with torch.no_grad():
        dense = layer(x)
    got = masked_output(layer, (x,), {})
    assert got.shape == dense.shape
    scale = float(dense.abs().max()) if dense.numel() else 0.0
    assert float((got - dense).abs().max()) <= 1e-6 * max(scale, 1.0)


@pytest.mark.parametrize("conv", [True, False])
def test_large_layers_compute_only_the_live_rows_from_the_live_inputs(conv):
    layer, x = _zero_rows_and_inputs(0, conv, True, 0.5, 0.5)
    live_rows = int((layer.weight.reshape(layer.weight.shape[0], -1) != 0).any(1).sum())
    channels = x.transpose(0, 1) if conv else x.reshape(-1, x.shape[-1]).t()  # [input channels, ...]
    live_in = int(channels.reshape(channels.shape[0], -1).ne(0).any(1).sum())
    seen = []
    if conv:
        original = layer._conv_forward
        layer._conv_forward = lambda inp, w, b: (seen.append(tuple(w.shape[:2])), original(inp, w, b))[1]
    else:
        original = reference.F.linear

        def linear(inp, w, b=None):
            seen.append(tuple(w.shape[:2]))
            return original(inp, w, b)

        reference.F.linear = linear
    try:
        masked_output(layer, (x,), {})
    finally:
        if not conv:
            reference.F.linear = original
    assert seen == [(live_rows, live_in)] and live_rows < layer.weight.shape[0] and live_in < layer.weight.shape[1]


def test_small_layers_run_dense_hooks_still_run_and_every_forward_is_put_back():
    """Below ``MIN_MACS`` a layer runs as it is: the output is bit for bit the dense one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 48, 3), nn.ReLU(), nn.Conv2d(48, 4, 1), nn.Flatten(), nn.Linear(144, 3))
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        model[2].weight[:2] = 0
        dense = model(x)
    calls = []
    model[2].register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    got = masked_output(model, (x,), {})
    assert torch.equal(got, dense) and calls == [(1, 4, 6, 6)]
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_failing_forward_still_puts_the_layers_back():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(9, 2))
    with pytest.raises(RuntimeError), skipping_zeros(model):
        model(torch.randn(2, 8))
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_grouped_and_subclassed_layers_are_left_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(64, 64, 3, groups=4), MyConv(64, 64, 3))
    with skipping_zeros(model):
        assert all("forward" not in m.__dict__ for m in model.modules())
