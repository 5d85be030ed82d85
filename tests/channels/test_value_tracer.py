"""The dependency-aware pruner's trace computes each node's value as it records it (``ValueTracer``); large
activations are kept only while the traced forward holds them, and the structure pass reads stand-ins of
their shape. A layer whose large output has a shape known from its attributes is not run at all (zeros of that
shape), unless an integer or bool value computed off it could steer the graph. The stand-ins change nothing the
structure pass decides, and a rule that cannot work on them makes the pass compute the real values instead."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic
from nnic.builtins.speedup_rules import builtin_rules
from nnic.channels import RuleTable, analyze
from nnic.channels.concrete import ValueTracer
from nnic.channels.tracing import trace
from nnic.speedup.rules import PassThroughRule

tvm = pytest.importorskip("torchvision.models")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = y + self.b(y)
        return self.head(y.mean((2, 3)))


def test_large_values_are_stand_ins_and_small_ones_real():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 32, 32)  # 32 x 32 x 32 activations: above the threshold
    values: dict = {}
    gm = trace(model, (x,), {}, values=values)
    by_name = {n.name: values.get(n) for n in gm.graph.nodes}
    with torch.no_grad():
        a = model.a(x)
    stand_in = by_name["a"]
    assert stand_in.shape == a.shape and stand_in.dtype == a.dtype and set(stand_in.stride()) == {0}
    assert a.numel() >= ValueTracer.stand_in_min > by_name["mean"].numel()
    assert by_name["mean"].shape == (1, 32) and by_name["head"].shape == (1, 4)  # small: right shapes


def _traced_calls(model: nn.Module, x: torch.Tensor) -> list[str]:
    calls: list[str] = []
    for name in ("a", "b", "head"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    trace(model, (x,), {}, values={})
    return calls


def test_layers_whose_large_output_has_a_known_shape_are_not_run_nor_those_computing_from_them():
    # The convolutions' 32 x 32 x 32 outputs are zeros of their shape; the head's small output is computed
    # from them (its value would be wrong anyway): zeros of its shape too.
    assert _traced_calls(Net().eval(), torch.randn(1, 3, 32, 32)) == []


def test_small_layers_on_real_values_run():
    assert _traced_calls(Net().eval(), torch.randn(1, 3, 8, 8)) == ["a", "b", "head"]  # 32 x 8 x 8: small


def test_small_values_computed_from_a_layer_that_did_not_run_have_memory_of_their_own():
    model, x = Net().eval(), torch.randn(1, 3, 32, 32)
    values: dict = {}
    gm = trace(model, (x,), {}, values=values)
    head = {n.name: values.get(n) for n in gm.graph.nodes}["head"]
    assert head.shape == (1, 4) and head.is_contiguous() and not head.any()


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, 1)

    def forward(self, x):
        y = self.a(x)
        y += self.b(x)
        return torch.relu_(y)


def test_ops_writing_into_a_layer_that_did_not_run_still_get_values():
    model, x = InPlace().eval(), torch.randn(1, 3, 32, 32)
    values: dict = {}
    gm = trace(model, (x,), {}, values=values)
    computed = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert all(n in values and values[n].shape == (1, 32, 32, 32) for n in computed)


class Routed(nn.Module):
    """An index computed off a convolution's output picks the channels that go on: its value matters."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        top = y.mean((0, 2, 3)).argsort()[:8]
        return self.b(y.index_select(1, top))


def test_an_index_computed_off_a_layer_that_did_not_run_makes_every_layer_run():
    torch.manual_seed(0)
    model, x = Routed().eval(), torch.randn(1, 3, 32, 32)
    values: dict = {}
    gm = trace(model, (x,), {}, values=values)
    with torch.no_grad():
        top = model.a(x).mean((0, 2, 3)).argsort()[:8]
    assert torch.equal({n.name: values.get(n) for n in gm.graph.nodes}["getitem"], top)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0"])
def test_the_pruners_masks_are_those_computed_from_real_values(name, monkeypatch):
    torch.manual_seed(0)
    dense = tvm.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    head = [n for n, m in dense.named_modules() if isinstance(m, nn.Linear)][-1]
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": [head]}]

    def masks(model):
        return nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=x).checked_masks()

    with_stand_ins = masks(copy.deepcopy(dense))
    monkeypatch.setattr(ValueTracer, "stand_in_min", float("inf"))  # every value kept, as before
    real = masks(copy.deepcopy(dense))
    assert with_stand_ins.keys() == real.keys()
    for layer in real:
        for p, m in real[layer].items():
            assert torch.equal(with_stand_ins[layer][p], m), (layer, p)


class Scale(nn.Module):
    def forward(self, x):
        return x * 2


class NeedsValues(PassThroughRule):
    """Reads its input's values (here: refuses a tensor without memory of its own)."""

    name, targets = "test.needs-values", (Scale,)

    def propagate(self, call):
        if 0 in call.value(0).stride():
            raise RuntimeError("a stand-in")
        super().propagate(call)


def test_a_rule_that_fails_on_stand_ins_gets_the_real_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), Scale(), nn.Conv2d(32, 8, 1)).eval()
    x = torch.randn(1, 3, 32, 32)
    table = RuleTable(builtin_rules() + [NeedsValues()])
    prop = analyze(model, x, table, leaf_modules=[Scale], structure_only=True)
    ids_out = prop.state.slots[("0", "out")]
    ids_in = prop.state.slots[("2", "in")]
    roots = prop.state.uf.root_array()
    assert (roots[ids_out] == roots[ids_in]).all()  # coupled through Scale, computed on real values
