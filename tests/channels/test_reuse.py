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


@pytest.fixture
def analyses(monkeypatch):
    """Every propagation speedup runs, as it comes back from ``analyze``."""
    import nnic.speedup.api as speedup_api

    seen = []
    real = speedup_api.analyze

    def spying(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(speedup_api, "analyze", spying)
    return seen


def masked_output(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def prune(model: nn.Module) -> dict:
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    return nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=X).compress()[1]


def test_speedup_after_pruning_adopts_the_pruning_groups_and_gives_what_a_fresh_analysis_gives(analyses):
    torch.manual_seed(0)
    model = Block()
    masks = prune(model)
    fresh = Block()
    fresh.load_state_dict(nnic.masking.plain_state_dict(model))  # the same masked weights, never analysed
    expected = masked_output(model)
    nnic.speedup_model(model, X, masks)
    nnic.speedup_model(fresh, X, {})
    reused, computed = analyses
    assert reused.capture.reused and reused.groups_reused  # the pruner's graph and groups
    assert not computed.capture.reused and not computed.groups_reused
    assert reused.state.uf.roots() == computed.state.uf.roots()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    torch.testing.assert_close(masked_output(model), expected)


def test_a_model_changed_between_pruning_and_speedup_is_analysed_again(analyses):
    torch.manual_seed(0)
    model = Block()
    masks = prune(model)
    model.head = nn.Linear(8, 3)  # a new classifier: another fingerprint
    expected = masked_output(model)
    nnic.speedup_model(model, X, masks)
    (prop,) = analyses
    assert not prop.capture.reused and not prop.groups_reused
    assert model.a.out_channels == 4
    torch.testing.assert_close(masked_output(model), expected)


class CoupleFirstTwo:
    """A rule for ``torch.relu`` that also couples the first two channels: another union than pruning asked for."""

    name = "test.relu_couples_first_two"
    targets = (torch.relu,)

    def propagate(self, call):
        spec = call.spec(0)
        if spec is not None:
            call.couple(spec.ids[:1], spec.ids[1:2])
        call.set_output(spec)


def test_other_unions_than_the_pruning_ones_are_never_adopted(analyses):
    torch.manual_seed(0)
    model = Block()
    masks = prune(model)
    expected = masked_output(model)
    nnic.speedup_model(model, X, masks, rules=[CoupleFirstTwo()])
    (prop,) = analyses
    assert prop.capture.reused and not prop.groups_reused  # same graph, other groups
    ids = prop.state.slots[("a", "out")]
    assert prop.state.uf.find(ids[0]) == prop.state.uf.find(ids[1])
    torch.testing.assert_close(masked_output(model), expected)


def test_union_find_adopts_a_record_only_of_the_same_unions():
    from nnic.channels.graph import UnionFind

    def build(pairs):
        uf = UnionFind()
        uf.new(6)
        for a, b in pairs:
            uf.union_pairs(a, b)
        return uf

    record = build([([0, 1], [2, 3])]).record()
    same, other, bigger = build([([0, 1], [2, 3])]), build([([0, 1], [3, 2])]), build([([0, 1], [2, 3])])
    bigger.new(1)
    assert same.adopt(record) and same.roots() == [0, 1, 0, 1, 4, 5]
    assert not other.adopt(record) and other.roots() == [0, 1, 1, 0, 4, 5]
    assert not bigger.adopt(record) and bigger.roots() == [0, 1, 0, 1, 4, 5, 6]


def test_a_held_model_is_walked_once_for_its_fingerprint_and_again_after_a_change(monkeypatch):
    """Within ``reuse.held`` the fingerprint's module walk runs once; it equals a fresh one; a module switched
    to training mode, or a change announced with ``reuse.forget``, gives the fresh fingerprint again."""
    from nnic.channels import reuse

    model = Block().eval()
    walks = [0]
    real = nn.Module.named_modules

    def counting(self, *args, **kwargs):
        if self is model:
            walks[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "named_modules", counting)

    def key():
        return reuse.fingerprint(model, (X,), {}, TABLE.leaf_types, [])

    fresh = key()
    walks[0] = 0
    with reuse.held(model):
        assert key() == fresh and key() == fresh
        assert walks[0] == 1
        model.b.train()
        trained = key()
        assert trained != fresh
        model.b.eval()
        assert key() == fresh
        model.a = nn.Conv2d(3, 8, 1)  # a change the caller announces
        reuse.forget(model)
        changed = key()
    assert changed != fresh
    assert changed == key()  # outside the block: a fresh walk gives the same
    model.b.train()
    entry_b = [entry for entry in key()[0] if entry[0] == "b"]
    assert entry_b == [entry for entry in trained[0] if entry[0] == "b"]  # as seen held (a fresh walk of "b")


@pytest.mark.parametrize("before, after", [(1, True), (1, 1.0), (0.0, -0.0), ((1, 2), (1.0, 2)), ((1, 2), [1, 2]),
                                           ("1", 1), (None, False), (torch.float32, torch.float16)])
def test_an_attribute_changed_to_an_equal_value_of_another_kind_changes_the_fingerprint(before, after):
    """A trace may branch on an attribute's type (``is True``, ``isinstance``), so the fingerprint tells apart
    values that Python calls equal (``1 == True == 1.0``, ``0.0 == -0.0``, ``(1, 2) == (1.0, 2)``)."""
    from nnic.channels import reuse

    model = Block().eval()

    def key():
        return reuse.fingerprint(model, (X,), {}, TABLE.leaf_types, [])

    model.b.flag = before
    first = key()
    model.b.flag = after
    assert key() != first
    model.b.flag = before
    assert key() == first


def test_a_nan_attribute_gives_an_equal_fingerprint_each_time():
    """An unchanged model keeps its fingerprint even where an attribute is NaN (NaN != NaN as a float): the
    graph is reused, not traced again on every analysis."""
    from nnic.channels import reuse

    model = Block().eval()
    model.b.eps = float("nan")
    assert reuse.fingerprint(model, (X,), {}, TABLE.leaf_types, []) == \
        reuse.fingerprint(model, (X,), {}, TABLE.leaf_types, [])


def test_an_equal_fresh_fingerprint_is_replaced_by_the_kept_one_and_a_different_one_is_not():
    """What lets the later comparisons of one analysis (graph, trace values, unions) be by identity."""
    from nnic.channels import reuse

    model = Block().eval()
    fresh = lambda: reuse.fingerprint(model, (X,), {}, TABLE.leaf_types, [])  # noqa: E731
    key = fresh()
    assert reuse.canonical(model, key) is key  # nothing kept for this model yet
    analyze(model, X, TABLE)
    kept = reuse._GRAPHS[model][0]
    again = fresh()
    assert again is not kept and again == kept and reuse.canonical(model, again) is kept
    model.pool = False  # a plain attribute the trace reads: another fingerprint, never the kept one
    changed = fresh()
    assert reuse.canonical(model, changed) is changed and changed != kept
