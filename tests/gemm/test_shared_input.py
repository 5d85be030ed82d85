"""``fuse_shared_input``: layers that read one input run as one int4 / int8 GEMM whose output slices are exactly
the separate layers' outputs; layers that cannot share a GEMM are refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnic import kernels
from nnic.quantization import Int4Linear, Int8Linear, SharedInputPart, fuse_shared_input


class Block(nn.Module):
    """A parent that calls ``a``, ``b`` and ``c`` on the same input, as an attention block calls q/k/v."""

    def __init__(self, a: nn.Module, b: nn.Module, c: nn.Module) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x) * 2, self.c(x)], dim=-1)


def linears(sizes: tuple[int, ...], k: int = 96, bias: tuple[bool, ...] = (True, False, True)) -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(k, n, bias=b) for n, b in zip(sizes, bias)]


def int4(lin: nn.Linear, affine: bool = False, group_size: int = 32) -> Int4Linear:
    if not affine:
        return Int4Linear.from_float(lin, group_size=group_size)
    g = torch.Generator().manual_seed(lin.out_features)
    groups = -(-lin.in_features // group_size)
    q = torch.randint(-8, 8, (lin.out_features, lin.in_features), generator=g, dtype=torch.int8)
    s = torch.rand(lin.out_features, groups, generator=g) * 0.1 + 0.01
    z = torch.randint(-3, 4, (lin.out_features, groups), generator=g, dtype=torch.int8)
    return Int4Linear.from_float(lin, group_size=group_size, weight_q=q, weight_scales=s, weight_zero_points=z)


def int4_act_order(lin: nn.Linear) -> Int4Linear:
    """GPTQ act order: groups over permuted columns; layers that share an input share the permutation."""
    perm = torch.randperm(lin.in_features, generator=torch.Generator().manual_seed(2))
    q, s = kernels.quantize_int4_weight(lin.weight.detach()[:, perm], 32)
    return Int4Linear.from_float(lin, group_size=32, weight_q=q, weight_scales=s, input_perm=perm)


CASES = {
    "int4 symmetric": lambda ls: [int4(lin) for lin in ls],
    "int4 affine and symmetric mixed": lambda ls: [int4(ls[0], affine=True), int4(ls[1]), int4(ls[2], affine=True)],
    "int4 act order": lambda ls: [int4_act_order(lin) for lin in ls],
    "int4 8-bit scales": lambda ls: [Int4Linear.from_float(lin, scale_dtype=torch.uint8) for lin in ls],
    "int8 per token": lambda ls: [Int8Linear.from_float(lin) for lin in ls],
    "int8 static": lambda ls: [Int8Linear.from_float(lin, act="static", act_scale=0.02, act_zero_point=128)
                               for lin in ls],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lead", [(1, 1), (3, 7), (2,)])
def test_fused_outputs_equal_the_separate_layers_bit_for_bit(case, lead):
    block = Block(*CASES[case](linears((64, 32, 40))))
    fused = copy.deepcopy(block)
    shared = fuse_shared_input(fused, ["a", "b", "c"], "abc")
    assert fused.abc is shared and shared.fused.out_features == 136
    assert all(isinstance(getattr(fused, n), SharedInputPart) for n in "abc")
    x = torch.randn(*lead, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(fused(x), block(x))
    with torch.no_grad():  # outside inference mode the input's version counter is checked too
        assert torch.equal(fused(x), block(x))
    assert shared._latest.input is None and shared._latest.outputs == ()  # nothing kept after every part took its slice


def test_a_part_called_on_another_input_gets_its_own_exact_output():
    block = Block(*[int4(lin) for lin in linears((64, 32, 40))])
    fused = copy.deepcopy(block)
    fuse_shared_input(fused, ["a", "b", "c"], "abc")
    x, y = torch.randn(2, 96), torch.randn(2, 96)
    assert torch.equal(fused.a(x), block.a(x))
    assert torch.equal(fused.b(y), block.b(y))  # not the slice cached for x
    assert torch.equal(fused.a(x), block.a(x))  # a's slice for x was taken already: computed again
    x2 = x.clone()
    fused.a(x2)
    x2.mul_(3)  # changed in place after the GEMM: the cached output is stale
    assert torch.equal(fused.b(x2), block.b(x2))


def test_fused_model_survives_deepcopy_and_state_dict_holds_the_weights_once():
    fused = Block(*[int4(lin) for lin in linears((64, 32, 40))])
    fuse_shared_input(fused, ["a", "b", "c"], "abc")
    keys = list(fused.state_dict())
    assert all(k.startswith("abc.fused.") for k in keys), keys
    twin = copy.deepcopy(fused)
    assert twin.a.shared is twin.abc and twin.c.shared is twin.abc
    x = torch.randn(1, 96)
    assert torch.equal(twin(x), fused(x))


def test_layers_that_cannot_share_a_gemm_are_refused_by_name():
    ls = linears((64, 32, 40))
    with pytest.raises(ValueError, match=r"Block\.b cannot share a GEMM with Block\.a: group_size 64 != 32"):
        fuse_shared_input(Block(int4(ls[0]), int4(ls[1], group_size=64), int4(ls[2])), ["a", "b", "c"], "abc")
    with pytest.raises(TypeError, match=r"Block\.b: expected Int4Linear .* got Int8Linear"):
        fuse_shared_input(Block(int4(ls[0]), Int8Linear.from_float(ls[1]), int4(ls[2])), ["a", "b", "c"], "abc")
    with pytest.raises(TypeError, match=r"Block\.a: expected an Int4Linear or Int8Linear .* got Linear"):
        fuse_shared_input(Block(*ls), ["a", "b", "c"], "abc")
    with pytest.raises(ValueError, match="static activation range"):
        fuse_shared_input(Block(Int8Linear.from_float(ls[0], act="static", act_scale=0.02, act_zero_point=128),
                                Int8Linear.from_float(ls[1], act="static", act_scale=0.03, act_zero_point=128),
                                Int8Linear.from_float(ls[2], act="static", act_scale=0.02, act_zero_point=128)),
                          ["a", "b", "c"], "abc")
    with pytest.raises(ValueError, match=r"Block\.c .*a different input permutation"):
        fuse_shared_input(Block(int4_act_order(ls[0]), int4_act_order(ls[1]), int4(ls[2])), ["a", "b", "c"], "abc")
    with pytest.raises(ValueError, match="in_features 64 != 96"):
        fuse_shared_input(Block(int4(ls[0]), int4(nn.Linear(64, 32)), int4(ls[2])), ["a", "b", "c"], "abc")
    block = Block(*[int4(lin) for lin in ls])
    with pytest.raises(ValueError, match="two or more distinct"):
        fuse_shared_input(block, ["a", "a"], "abc")
    with pytest.raises(ValueError, match=r"Block\.c already exists"):
        fuse_shared_input(block, ["a", "b"], "c")
