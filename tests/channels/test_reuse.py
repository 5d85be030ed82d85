"""The speedup after dependency-aware pruning reuses the pruning's symbolic graph (one trace per model shape),
and never a graph that no longer describes the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic
import nnic.channels.capture as capture_module
from nnic.builtins.speedup_rules import builtin_rules
from nnic.channels import RuleTable, analyze


class Block(nn.Module):
    """A residual block with a learned per-channel scale (read through a get_attr node) and a plain attribute
    that the forward reads (a trace bakes it in)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.head = nn.Linear(8, 4)
        self.pool = True

    def forward(self, x):
        y = self.a(x)
        y = y + self.b(torch.relu(y)) * self.scale
        y = y.mean((2, 3)) if self.pool else y.amax((2, 3))
        return self.head(y)


X = torch.randn(2, 3, 8, 8)
TABLE = RuleTable(builtin_rules())


@pytest.fixture
def traces(monkeypatch):
    """The number of symbolic traces run so far."""
    count = [0]
    real = capture_module.trace

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "trace", counting)
    return count


def test_pruning_then_speedup_traces_once_and_still_verifies(traces):
    torch.manual_seed(0)
    model = Block()
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    _, masks = nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=X).compress()
    assert traces[0] == 1
    nnic.speedup_model(model, X, masks)  # verify=True: the output is the masked model's
    assert traces[0] == 1
    assert model.a.out_channels == model.b.out_channels == 4 and model.scale.shape == (1, 4, 1, 1)


def test_a_reused_graph_reads_the_current_tensors(traces):
    torch.manual_seed(0)
    model = Block().eval()
    analyze(model, X, TABLE)
    with torch.no_grad():
        model.scale = nn.Parameter(torch.zeros(1, 8, 1, 1))  # replaced, same shape: the graph still fits
        expected = model(X)
    prop = analyze(model, X, TABLE)
    assert traces[0] == 1
    torch.testing.assert_close(prop.output, expected, rtol=0, atol=0)


@pytest.mark.parametrize("change", ["attribute", "shape", "input", "leaf", "forward"])
def test_a_changed_model_or_input_traces_again(traces, change, monkeypatch):
    torch.manual_seed(0)
    model, x, leaves = Block().eval(), X, ()
    analyze(model, x, TABLE)
    if change == "attribute":
        model.pool = False  # the trace took the mean branch; the model now takes the other one
    elif change == "shape":
        model.head = nn.Linear(8, 3)
    elif change == "input":
        x = torch.randn(2, 3, 6, 6)
    elif change == "leaf":
        leaves = ("b",)
    else:
        original = Block.forward
        monkeypatch.setattr(Block, "forward", lambda self, x: original(self, x) * 2)  # patched on the class
    with torch.no_grad():
        expected = model(x)
    prop = analyze(model, x, TABLE, leaf_modules=leaves)
    assert traces[0] == 2
    torch.testing.assert_close(prop.output, expected, rtol=0, atol=0)


def test_a_second_speedup_of_a_shrunk_model_traces_it_again(traces):
    torch.manual_seed(0)
    model = Block()
    keep = torch.arange(8) % 2 == 0
    masks = {name: {"weight": keep.view(8, 1, 1, 1).expand_as(getattr(model, name).weight), "bias": keep}
             for name in ("a", "b")}
    nnic.speedup_model(model, X, masks)
    assert model.a.out_channels == 4
    nnic.speedup_model(model, X, {})
    assert traces[0] == 2
