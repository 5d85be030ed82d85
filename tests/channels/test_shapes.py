"""``nnic.channels.shapes``: the output shape of a layer or elementwise op from its attributes and inputs equals
the shape its forward gives, and a layer, op or input it is unsure of gets ``None`` (the layer then runs)."""

from __future__ import annotations

import operator
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnic.channels.shapes import op_zeros, output_shape, zeros_of

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
    (nn.AdaptiveAvgPool2d(1), (2, 4, 7, 9)),
    (nn.AdaptiveAvgPool2d((3, None)), (4, 7, 9)),  # unbatched; None keeps the input's width
    (nn.AdaptiveAvgPool1d(5), (2, 4, 12)),
    (nn.AdaptiveAvgPool3d((1, 2, 3)), (1, 2, 4, 5, 6)),
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
    (nn.AdaptiveMaxPool2d(1), torch.randn(1, 4, 8, 8)),  # not listed
    (nn.AdaptiveAvgPool2d(1), torch.randn(1, 4, 0, 8)),  # an empty input: the forward raises
    (nn.MaxPool2d(2, return_indices=True), torch.randn(1, 4, 8, 8)),  # two outputs
    (nn.MaxPool2d(3, padding=2), torch.randn(1, 4, 8, 8)),  # more padding than torch allows: the forward raises
])
def test_unsure_layers_and_inputs_get_none(module, x):
    assert output_shape(module, (x,), {}) is None


def test_zeros_only_for_outputs_at_least_as_large_as_asked():
    conv, x = nn.Conv2d(4, 6, 3, padding=1), torch.randn(1, 4, 8, 8)
    zeros = zeros_of(conv, (x,), {}, at_least=6 * 64)
    assert zeros.shape == (1, 6, 8, 8) and zeros.dtype == x.dtype and not zeros.any()
    assert set(zeros.stride()) == {0}  # no memory of its own
    assert zeros_of(conv, (x,), {}, at_least=6 * 64 + 1) is None


def test_pooling_shapes_are_torchs_wherever_given():
    """Random pooling layers and inputs (seeded): a shape given is the forward's; ``None`` where the forward
    raises, and for some inputs torch accepts (checks read conservatively)."""
    rng = random.Random(0)
    given = 0
    for _ in range(2000):
        dims = rng.choice([1, 2])
        kind = rng.choice([(nn.MaxPool1d, nn.MaxPool2d), (nn.AvgPool1d, nn.AvgPool2d)])[dims - 1]
        kw = dict(kernel_size=rng.randint(1, 4), stride=rng.choice([None, 1, 2, 3]), padding=rng.randint(0, 2),
                  ceil_mode=rng.random() < 0.5)
        if kind in (nn.MaxPool1d, nn.MaxPool2d):
            kw["dilation"] = rng.randint(1, 2)
        module = kind(**kw)
        x = torch.randn([1, 2][:rng.randint(1, 2)] + [rng.randint(1, 12) for _ in range(dims)])
        try:
            real = tuple(module(x).shape)
        except RuntimeError:
            real = None
        got = output_shape(module, (x,), {})
        if got is not None:
            given += 1
            assert got == real, (module, tuple(x.shape))
    assert given > 500  # the formula answers for most of them


def _real(op, kind, args):
    return getattr(args[0], op)(*args[1:]) if kind == "call_method" else op(*args)


def _stand_in(*shape):
    return torch.zeros(()).expand(shape)


@pytest.mark.parametrize("kind, op, args", [
    ("call_function", operator.add, (torch.randn(2, 8, 9, 9), torch.randn(2, 8, 9, 9))),
    ("call_function", operator.mul, (torch.randn(1, 8, 1, 1), torch.randn(2, 8, 9, 9))),  # broadcast
    ("call_function", operator.truediv, (torch.randn(2, 8, 9, 9), 3)),
    ("call_function", torch.add, (torch.randn(2, 8, 9, 9), 1.5)),
    ("call_function", F.relu, (torch.randn(2, 8, 9, 9),)),
    ("call_function", F.hardswish, (torch.randn(2, 8, 9, 9, dtype=torch.float64),)),
    ("call_method", "sigmoid", (torch.randn(2, 8, 9, 9),)),
    ("call_method", "mul", (torch.randn(2, 8, 9, 9), torch.randn(9))),
    ("call_function", operator.iadd, (_stand_in(2, 8, 9, 9), torch.randn(2, 8, 9, 9))),  # into a stand-in
])
def test_elementwise_ops_get_zeros_of_the_real_results_shape_and_dtype(kind, op, args):
    zeros = op_zeros(kind, op, args, {}, at_least=100)
    real = _real(op, kind, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    assert zeros.shape == real.shape and zeros.dtype == real.dtype and not zeros.any()
    assert set(zeros.stride()) == {0}  # no memory of its own


@pytest.mark.parametrize("kind, op, args", [
    ("call_function", operator.iadd, (torch.randn(2, 8, 9, 9), torch.randn(2, 8, 9, 9))),  # writes a real tensor
    ("call_method", "add_", (torch.randn(2, 8, 9, 9), 1.0)),
    ("call_function", operator.iadd, (_stand_in(1, 8, 9, 9), torch.randn(2, 8, 9, 9))),  # would have to grow
    ("call_function", operator.add, (torch.randn(2, 8, 9, 9), torch.randn(2, 7, 9, 9))),  # does not broadcast
    ("call_function", operator.add, (torch.ones(2, 8, 9, 9, dtype=torch.long), 1)),  # integers may steer shapes
    ("call_function", operator.add, (torch.randn(2, 8, 9, 9), torch.randn((), dtype=torch.float64))),  # promotion
    ("call_function", operator.add, (torch.randn(2, 3), torch.randn(2, 3))),  # small: computed, kept real
    ("call_function", operator.getitem, (torch.randn(2, 8, 9, 9), 0)),  # not elementwise
    ("call_method", "view", (torch.randn(2, 8, 9, 9), -1)),
    ("call_function", F.relu, (torch.randn(2, 8, 9, 9), True)),  # in place, the flag given by position
])
def test_ops_it_is_unsure_of_get_none(kind, op, args):
    assert op_zeros(kind, op, args, {}, at_least=100) is None


def test_elementwise_ops_with_other_keyword_arguments_get_none():
    x = torch.randn(2, 8, 9, 9)
    assert op_zeros("call_function", torch.add, (x, x), {"alpha": 2}, at_least=100) is not None
    assert op_zeros("call_function", torch.add, (x, x), {"out": torch.empty_like(x)}, at_least=100) is None
    assert op_zeros("call_function", F.relu, (x,), {"inplace": True}, at_least=100) is None  # writes a real one
