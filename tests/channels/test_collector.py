"""The garbage collector is paused while analysis and speedup run, and left as it was found after them."""

import gc

import pytest
import torch
from torch import nn

import nnic
from nnic.channels.collector import collection_paused


@pytest.fixture
def collector_enabled():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_within_enabled_after(collector_enabled):
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():  # nested: the outer pause still holds after the inner one
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_enabled_again_after_an_error(collector_enabled):
    with pytest.raises(ValueError), collection_paused():
        raise ValueError("inside")
    assert gc.isenabled()


def test_a_collector_the_caller_disabled_stays_disabled(collector_enabled):
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()


def test_prune_and_speedup_pause_it_and_leave_it_enabled(collector_enabled):
    seen = []
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model[1].register_forward_hook(lambda m, i, o: seen.append(gc.isenabled()))
    x = torch.randn(1, 3, 8, 8)
    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}], dependency_aware=True,
                         dummy_input=x)
    nnic.prune_and_speedup(pruner)
    assert model[0].out_channels == 4 and gc.isenabled()
    assert seen and not any(seen)  # every forward the analysis and verification ran: collector paused


def test_compress_and_speedup_model_leave_it_enabled(collector_enabled):
    """The two calls: masks computed and attached as parametrizations, then speedup."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}], dependency_aware=True,
                           dummy_input=x).compress()
    assert gc.isenabled()
    nnic.speedup_model(model, x, masks)
    assert model[0].out_channels == 4 and gc.isenabled()
