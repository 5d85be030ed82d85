"""``nnic.prune_and_speedup``: the pruner's masks straight into speedup, without attaching them first, gives the
model ``compress()`` then ``speedup_model`` give (same masks, same shapes, same weights, same output); a failed
speedup leaves the model as ``compress()`` leaves it; a pruner with its own ``compress`` runs it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import nnic
from nnic.speedup import SpeedupError

from .helpers import assert_close, masked_output, run

tvm = pytest.importorskip("torchvision.models")

CFG = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}]


def _two_ways(model: nn.Module, x: torch.Tensor, cfg: list[dict]):
    """(compress then speedup_model, prune_and_speedup) on two copies of ``model``: models and masks."""
    a, b = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    _, masks_a = nnic.pruner("l1norm", a, cfg, dependency_aware=True, dummy_input=x).compress()
    nnic.speedup_model(a, x, masks_a)
    pruner = nnic.pruner("l1norm", b, cfg, dependency_aware=True, dummy_input=x)
    got, masks_b, report = nnic.prune_and_speedup(pruner)
    assert got is b and pruner.masks is masks_b and report.removed_groups > 0
    return a, masks_a, b, masks_b


@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"),
                                        ("regnet_x_400mf", "fc")])
def test_prune_and_speedup_is_compress_then_speedup(name, head):
    torch.manual_seed(0)
    model = tvm.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    cfg = CFG + [{"exclude": True, "op_names": [head]}]
    a, masks_a, b, masks_b = _two_ways(model, x, cfg)
    assert masks_a.keys() == masks_b.keys()
    for layer in masks_a:
        for p in masks_a[layer]:
            assert torch.equal(masks_a[layer][p], masks_b[layer][p]), (layer, p)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    assert not any(parametrize.is_parametrized(m) for m in b.modules())
    assert sum(p.numel() for p in b.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert_close(run(b, x), masked_output(model, x, masks_b))


class Mean(nn.Module):
    def forward(self, x):
        return x.mean(1, keepdim=True)


class Lying(nnic.speedup.Rule):
    name, targets = "test.lying-mean", (Mean,)

    def propagate(self, call):  # claims the channel mean reads none of its input channels
        call.sink(call.spec(0).ids, torch.ones(len(call.spec(0)), dtype=torch.bool))


def test_a_failed_speedup_leaves_the_model_as_compress_leaves_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1))
    x = torch.randn(2, 3, 5, 5)
    compressed = copy.deepcopy(model)
    _, masks = nnic.pruner("l1norm", compressed, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}])
    with pytest.raises(SpeedupError, match="verify"):
        nnic.prune_and_speedup(pruner, x, rules=[Lying()], leaf_modules=[Mean])
    assert parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[0], "bias")
    assert pruner.masks.keys() == masks.keys()
    assert model.state_dict().keys() == compressed.state_dict().keys()
    for k, v in compressed.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(run(model, x), run(compressed, x))


def test_a_failed_speedup_after_a_fold_into_a_masked_layer_leaves_the_model_as_compress_leaves_it():
    """Masked weights are not copied before speedup (the masks are attached again on failure); a fold writes
    into a whole bias, masked or not, so the layer is copied before it: the restore undoes the fold."""
    torch.manual_seed(0)  # hardsigmoid(0) = 0.5: the dead channels of "0" reach "2" as constants, folded there
    model = nn.Sequential(nn.Linear(4, 8), nn.Hardsigmoid(), nn.Linear(8, 6), Mean(), nn.Linear(1, 2)).eval()
    x = torch.randn(3, 4)
    cfg = [{"sparsity": 0.5, "op_names": ["0", "2"]}]
    compressed = copy.deepcopy(model)
    nnic.pruner("l1norm", compressed, cfg).compress()
    folded = []
    rule = next(r for r in nnic.speedup.api.registered_rules() if nn.Linear in getattr(r, "targets", ()))
    original_fold = type(rule).fold

    def recording_fold(self, module, *args):
        folded.append(module)
        return original_fold(self, module, *args)

    pruner = nnic.pruner("l1norm", model, cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(rule), "fold", recording_fold)
        with pytest.raises(SpeedupError, match="verify"):
            nnic.prune_and_speedup(pruner, x, rules=[Lying()], leaf_modules=[Mean])
    assert folded == [model[2]]  # the failure came after a fold into a masked layer's bias
    for k, v in compressed.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(run(model, x), run(compressed, x))


def test_the_snapshot_keeps_remasked_tensors_by_storage_and_copies_them_when_protected():
    from nnic.speedup.api import _Snapshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w0, w1 = model[0].weight, model[1].weight
    snapshot = _Snapshot(model, remasked=[w0, w1])
    assert len(snapshot.storage) == 2 and len(snapshot.values) == 2  # the two biases copied, not the weights
    with torch.no_grad():
        w0.data = torch.zeros(5, 5)  # storage replaced: given back
        snapshot.protect(model[1])  # copied now: an in-place write after it is undone
        w1.add_(1.0)
        model[1].bias.mul_(3.0)
    snapshot.restore()
    assert model[0].weight is w0 and model[1].weight is w1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_pruner_with_its_own_compress_runs_it_first():
    calls = []
    base = type(nnic.pruner("level", nn.Linear(2, 2), [{"sparsity": 0.5, "op_types": ["Linear"]}]))

    class Counting(base):
        def compress(self):
            calls.append(self)
            return super().compress()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pruner = Counting(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    got, masks, _ = nnic.prune_and_speedup(pruner, torch.randn(3, 8))
    assert calls == [pruner] and got is model and masks is pruner.masks
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_bad_arguments_are_named():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(TypeError, match="pruner: expected an nnic Pruner"):
        nnic.prune_and_speedup(model, torch.randn(3, 8))
    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}])
    with pytest.raises(ValueError, match="dummy_input: L1NormPruner has none"):
        nnic.prune_and_speedup(pruner)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
