"""Speedup's one walk of the module tree (``_ModuleTree``): ``named_modules`` order and names, the mask
parametrizations that the fold detaches whole left out, every other parametrization walked."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

import nnic
from nnic.channels.tracer import eval_mode
from nnic.speedup.api import _ModuleTree


def model() -> nn.Sequential:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), block, block, nn.Sequential(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2))


class Double(nn.Module):
    def forward(self, w):
        return 2 * w


def test_the_walk_is_named_modules_less_the_folded_parametrizations():
    m = model()
    assert _ModuleTree(m).named == list(m.named_modules())  # a shared block once, under its first name
    nnic.pruner("l1norm", m, [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).compress()
    parametrize.register_parametrization(m[6], "weight", Double())  # not a mask: torch's fold, walked
    tree = _ModuleTree(m)
    masked = ("0", "2.0", "2.1")  # the convs and the BatchNorm after the pruned one
    expected = [(n, x) for n, x in m.named_modules() if not n.startswith(tuple(f"{k}.parametrizations" for k in masked))]
    assert tree.named == expected
    assert list(tree.sealed) == [m.get_submodule(k) for k in masked]
    assert [n for n, _ in tree.parametrized] == [*masked, "6"]
    originals = [plist.original for k in masked for plist in m.get_submodule(k).parametrizations.values()]
    assert len(tree.sealed_originals()) == len(originals) == 6
    assert all(a is b for a, b in zip(tree.sealed_originals(), originals))


class OwnTrain(nn.Linear):
    def train(self, mode: bool = True):
        self.calls = getattr(self, "calls", 0) + 1
        return super().train(mode)


def test_eval_mode_calls_eval_where_it_changes_something():
    m = model().eval()
    m[1].training = True
    eval_mode(m, list(m.modules()))
    assert not any(x.training for x in m.modules())
    own = nn.Sequential(OwnTrain(2, 2)).eval()  # an override of train is called even when the flags are set
    calls = own[0].calls
    eval_mode(own, list(own.modules()))
    assert own[0].calls == calls + 1
    plain = model().eval()
    before = {n: vars(x).copy() for n, x in plain.named_modules()}
    eval_mode(plain, list(plain.modules()))
    assert {n: vars(x) for n, x in plain.named_modules()} == before
