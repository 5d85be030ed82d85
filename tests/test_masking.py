"""Masks given to nnic are checked against the model, with errors that say which mask is wrong and why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnic.masking import check_masks, plain_state_dict
from nnic.pruning import Pruner


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("masks, error, message", [
    ({"3": {"weight": torch.ones(2, 5)}}, ValueError, r"masks\['3'\]\['weight'\]: expected shape \(2, 4\) \(the parameter's\), got \(2, 5\)"),
    ({"fc": {"weight": torch.ones(2, 4)}}, ValueError, r"masks\['fc'\]: no such layer in Sequential"),
    ({"00": {"weight": torch.ones(4, 3, 3, 3)}}, ValueError, r"did you mean '0'"),
    ({"3": {"kernel": torch.ones(2, 4)}}, ValueError, r"Linear '3' has no parameter 'kernel'; it has \['weight', 'bias'\]"),
    ({"3": {"weight": torch.full((2, 4), 0.5)}}, ValueError, r"a mask holds only 0/1"),
    ({"3": {"weight": [[1, 0]]}}, TypeError, r"masks\['3'\]\['weight'\]: expected a tensor, got list"),
    ({"3": torch.ones(2, 4)}, TypeError, r"masks\['3'\]: expected a dict"),
    ([("3", {})], TypeError, r"masks: expected a dict"),
])
def test_bad_masks_are_named(masks, error, message):
    with pytest.raises(error, match=message):
        check_masks(model(), masks)


def test_float_and_bool_masks_are_both_accepted():
    check_masks(model(), {"3": {"weight": torch.ones(2, 4), "bias": None}, "1": {"weight": torch.ones(4, dtype=torch.bool)}})


def test_a_pruner_returning_a_bad_mask_is_stopped_before_touching_the_model():
    class Broken(Pruner):
        name = "broken"

        def calculate_masks(self):
            return {"3": {"weight": torch.ones(3, 3)}}

    m = model()
    before = plain_state_dict(m)
    with pytest.raises(ValueError, match="expected shape"):
        Broken(m, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(m).items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("numel", [7, 4095, 4096, 20000])  # both sides of the kernel's size threshold
def test_zeroing_under_a_mask_gives_positive_zeros_on_either_path(dtype, numel):
    from nnic.masking import zero_masked_

    g = torch.Generator().manual_seed(numel)
    t = torch.randn(numel, generator=g).to(dtype)
    t[::5] = float("nan")  # a masked NaN becomes zero as well: no multiplication
    mask = torch.rand(numel, generator=g) < 0.5
    expected = torch.where(mask, t, torch.zeros((), dtype=dtype))
    zero_masked_(t, mask)
    assert torch.equal(t[mask].isnan(), expected[mask].isnan())
    assert torch.equal(t[mask & ~t.isnan()], expected[mask & ~expected.isnan()])
    assert bool((t[~mask] == 0).all()) and not bool(t[~mask].signbit().any())


def test_unwrap_masks_refuses_a_foreign_parametrization_before_folding_anything():
    from torch.nn.utils import parametrize

    from nnic.masking import attach_mask
    from nnic.speedup.api import SpeedupError
    from nnic.speedup.engine import unwrap_masks

    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    attach_mask(model[0], "weight", torch.ones(4, 4, dtype=torch.bool).tril())
    parametrize.register_parametrization(model[1], "weight", Double())
    with pytest.raises(SpeedupError, match=r"1\.weight has a parametrization other than an nnic mask"):
        unwrap_masks(model)
    assert parametrize.is_parametrized(model[0], "weight")  # nothing folded


def test_a_partly_masked_module_is_checked_against_its_stored_tensors_as_torch_reads_them():
    """``parameter`` and ``check_masks`` read a module's stored tensors through its own dicts: the original behind
    an attached mask, a plain parameter beside it, a buffer, a parameter torch parametrized with something else.
    Each gives what torch's attribute reads give, and a mask that does not fit is still refused."""
    from torch.nn.utils import parametrize

    from nnic.masking import attach_mask, parameter

    class Double(nn.Module):
        def forward(self, w):
            return w * 2

    net = model()
    attach_mask(net[3], "weight", torch.ones(2, 4, dtype=torch.bool))
    parametrize.register_parametrization(net[0], "bias", Double())
    assert parameter(net[3], "weight") is net[3].parametrizations.weight.original
    assert parameter(net[3], "bias") is net[3].bias
    assert parameter(net[0], "bias") is net[0].parametrizations.bias.original
    assert parameter(net[0], "weight") is net[0].weight
    assert parameter(net[1], "running_mean") is net[1].running_mean
    check_masks(net, {"3": {"weight": torch.ones(2, 4), "bias": torch.ones(2)},
                      "0": {"weight": torch.ones(4, 3, 3, 3), "bias": torch.ones(4)}})
    for masks, message in [({"3": {"weight": torch.ones(4, 2)}}, r"expected shape \(2, 4\)"),
                           ({"3": {"bias": torch.ones(3)}}, r"expected shape \(2,\)"),
                           ({"0": {"bias": torch.ones(2)}}, r"expected shape \(4,\)"),
                           ({"1": {"running_mean": torch.ones(4)}}, r"has no parameter 'running_mean'")]:
        with pytest.raises(ValueError, match=message):
            check_masks(net, masks)
