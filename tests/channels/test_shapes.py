"""``nnic.channels.shapes``: the output shape of a layer from its attributes equals the shape its forward gives,
and a layer or input it is unsure of gets ``None`` (the layer then runs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnic.channels.shapes import output_shape, zeros_of

CASES = [
    (nn.Conv2d(4, 6, 3), (2, 4, 9, 11)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 9, 10)),
    (nn.Conv2d(4, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2), (1, 4, 17, 13)),
    (nn.Conv2d(4, 6, 3, padding="same", dilation=2), (1, 4, 7, 7)),
    (nn.Conv2d(4, 6, 3, padding="valid"), (1, 4, 7, 7)),
    (nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), (1, 4, 7, 7)),
    (nn.Conv1d(4, 6, 5, stride=2), (3, 4, 20)),
    (nn.Conv3d(2, 3, 3, padding=1, stride=2), (1, 2, 5, 6, 7)),
    (nn.Conv2d(4, 6, 3), (4, 9, 9)),  # unbatched: run
    (nn.Linear(5, 7), (2, 3, 5)),
    (nn.BatchNorm2d(4), (2, 4, 3, 3)),
    (nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    (nn.LayerNorm(5), (2, 3, 5)),
    (nn.ReLU(inplace=True), (2, 3)),
    (nn.Hardswish(), (2, 3, 4)),
    (nn.Dropout(0.5), (2, 3)),
]


@pytest.mark.parametrize("module, shape", CASES, ids=lambda c: type(c).__name__ if isinstance(c, nn.Module) else "")
def test_the_shape_is_the_one_the_forward_gives(module, shape):
    x = torch.randn(shape)
    got = output_shape(module.eval(), (x,), {})
    if got is not None:
        with torch.no_grad():
            assert got == tuple(module(x).shape)
    else:
        assert x.dim() == 3 and isinstance(module, nn.Conv2d)


class Doubled(nn.Conv2d):
    def forward(self, x):
        return torch.cat([super().forward(x)] * 2, 1)


@pytest.mark.parametrize("module, x", [
    (nn.Conv2d(4, 6, 3), torch.randn(1, 5, 8, 8)),  # wrong channel count: the forward raises
    (nn.Conv2d(4, 6, 3), torch.randn(1, 4, 8, 8, dtype=torch.float64)),  # another dtype
    (nn.Linear(5, 7), torch.randn(2, 6)),
    (nn.BatchNorm2d(4), torch.randn(2, 3, 3, 3)),
    (nn.LayerNorm(5), torch.randn(2, 3, 4)),
    (Doubled(4, 6, 3), torch.randn(1, 4, 8, 8)),  # a subclass with its own forward
    (nn.MaxPool2d(2), torch.randn(1, 4, 8, 8)),  # not listed
])
def test_unsure_layers_and_inputs_get_none(module, x):
    assert output_shape(module, (x,), {}) is None


def test_zeros_only_for_outputs_at_least_as_large_as_asked():
    conv, x = nn.Conv2d(4, 6, 3, padding=1), torch.randn(1, 4, 8, 8)
    zeros = zeros_of(conv, (x,), {}, at_least=6 * 64)
    assert zeros.shape == (1, 6, 8, 8) and zeros.dtype == x.dtype and not zeros.any()
    assert set(zeros.stride()) == {0}  # no memory of its own
    assert zeros_of(conv, (x,), {}, at_least=6 * 64 + 1) is None
