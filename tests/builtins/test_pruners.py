"""N:M, AGP/Linear, lottery ticket, movement and ADMM: exact sparsity, and accuracy on real training (digits)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nnic
from nnic.builtins.nm import NMPruner, check_nm, nm_mask, nm_violations
from nnic.builtins.scheduled import AGPPruner
from nnic.selection import amount

CONV_LINEAR = ["Conv2d", "Linear"]
MARGIN = 2.0  # accuracy points a pruned, fine-tuned model may lose against the dense one


def pruned(mask: torch.Tensor) -> int:
    return int((~mask).sum())


def assert_exact(masks, model, sparsity):
    for layer, per_param in masks.items():
        weight = model.get_submodule(layer).weight
        assert pruned(per_param["weight"]) == amount(sparsity, weight.numel()), layer
        assert torch.count_nonzero(weight[~per_param["weight"]]) == 0


# -- N:M ---------------------------------------------------------------------------------------------------

@given(n=st.integers(0, 4), m=st.sampled_from([4, 8]), rows=st.integers(1, 5), groups=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_nm_keeps_exactly_the_n_largest_of_every_m(n, m, rows, groups, seed):
    n = min(n, m)
    w = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, n, m)
    assert check_nm(mask, n, m) and nm_violations(mask, n, m) == 0
    blocks, keep = w.abs().reshape(-1, m), mask.reshape(-1, m)
    for b, k in zip(blocks, keep):
        if 0 < n < m:
            assert b[k].min() >= b[~k].max()


def test_nm_runs_along_input_channels_of_a_convolution():
    conv = nn.Conv2d(8, 2, 3)
    mask = nm_mask(conv.weight, 2, 4)
    per_position = mask.permute(0, 2, 3, 1).reshape(-1, 4)  # groups of 4 input channels at each (out, kh, kw)
    assert bool((per_position.sum(1) == 2).all())
    assert not check_nm(torch.ones(2, 8, dtype=torch.bool), 2, 4)
    assert check_nm(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), 2, 4)  # a weight: at most n non-zeros


def test_nm_ties_keep_the_earlier_position():
    mask = nm_mask(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 2, 4)
    assert mask.tolist() == [[True, True, False, False]]


def test_nm_pruner_config_and_errors():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6))
    _, masks = nnic.pruner("nm", model, [{"op_types": ["Linear"]}, {"op_names": ["1"], "n": 1, "m": 8}]).compress()
    assert check_nm(masks["0"]["weight"], 2, 4) and check_nm(masks["1"]["weight"], 1, 8)
    assert masks["0"]["bias"] is None
    with pytest.raises(ValueError, match=r"config_list\[0\]\['sparsity'\]: the N:M pruner's sparsity is 1 - n/m"):
        NMPruner(nn.Sequential(nn.Linear(8, 8)), [{"op_types": ["Linear"], "sparsity": 0.5}])
    with pytest.raises(ValueError, match=r"config_list\[0\]: expected 0 <= n <= m, got n=5, m=4"):
        NMPruner(nn.Sequential(nn.Linear(8, 8)), [{"op_types": ["Linear"], "n": 5}])
    with pytest.raises(ValueError, match=r"^0\.weight: N:M sparsity needs the input dimension .* multiple of m=3"):
        NMPruner(nn.Sequential(nn.Linear(8, 2)), [{"op_types": ["Linear"], "m": 3}]).compress()


def test_nm_2_4_on_digits_stays_within_margin_after_fine_tuning(digits, dense):
    model, dense_accuracy = dense
    config = [{"op_types": CONV_LINEAR}, {"op_names": ["conv1"], "exclude": True}]  # conv1 has 1 input channel
    _, masks = nnic.pruner("nm", model, config).compress()
    evaluator = digits.evaluator()
    evaluator.train(model, max_epochs=2)
    for layer in ("conv2", "fc1", "fc2"):
        assert check_nm(model.get_submodule(layer).weight, 2, 4) and check_nm(masks[layer]["weight"], 2, 4)
    assert evaluator.evaluate(model) >= dense_accuracy - MARGIN


# -- AGP / Linear --------------------------------------------------------------------------------------------

def test_agp_follows_the_cubic_schedule_and_ends_exactly_at_the_target():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    pruner = AGPPruner(model, [{"sparsity": 0.8, "op_types": ["Linear"]}], total_iteration=4)
    _, masks = pruner.compress()
    expected = [0.8 * (1 - (1 - t / 4) ** 3) for t in (1, 2, 3)] + [0.8]
    assert [r.sparsity["0"] for r in pruner.history] == pytest.approx(expected)
    assert [pruned(r.masks["0"]["weight"]) for r in pruner.history] == [amount(s, 256) for s in expected]
    assert_exact(masks, model, 0.8)


def test_linear_schedule_and_total_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    pruner = nnic.pruner("linear", model, [{"total_sparsity": 0.5, "op_types": ["Linear"]}], total_iteration=2)
    _, masks = pruner.compress()
    assert [r.sparsity["0"] for r in pruner.history] == [0.25, 0.5]
    assert pruned(masks["0"]["weight"]) + pruned(masks["1"]["weight"]) == (256 + 64) // 2


@pytest.mark.parametrize("name", ["agp", "linear"])
def test_scheduled_pruning_at_50_percent_on_digits(digits, dense, name):
    model, dense_accuracy = dense
    evaluator = digits.evaluator()
    pruner = nnic.pruner(name, model, [{"sparsity": 0.5, "op_types": CONV_LINEAR}], pruning_algorithm="level",
                         total_iteration=3, evaluator=evaluator, training_epochs=1)
    _, masks = pruner.compress()
    assert_exact(masks, model, 0.5)
    assert evaluator.evaluate(model) >= dense_accuracy - MARGIN
    best = pruner.get_best_result()
    assert best.score == max(r.score for r in pruner.history)
    assert best.model is not model and best.score == evaluator.evaluate(best.model)


def test_restore_best_puts_the_best_iteration_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    scores = iter([1.0, 3.0, 2.0])
    from nnic.evaluator import Evaluator

    evaluator = Evaluator(lambda *a: None, lambda p: torch.optim.SGD(p, lr=0.1), nn.MSELoss(),
                          evaluating_func=lambda m: next(scores))
    pruner = AGPPruner(model, [{"sparsity": 0.75, "op_types": ["Linear"]}], total_iteration=3, evaluator=evaluator)
    pruner.compress()
    assert pruner.get_best_result().iteration == 2
    pruner.restore_best()
    assert pruned(pruner.masks["0"]["weight"]) == amount(0.75 * (1 - (1 / 3) ** 3), 64)
    assert torch.count_nonzero(model[0].weight) == 64 - amount(0.75 * (1 - (1 / 3) ** 3), 64)


def test_a_misspelled_base_pruner_is_refused_early():
    with pytest.raises(KeyError, match="no pruner named 'levle'"):
        AGPPruner(nn.Sequential(nn.Linear(4, 4)), [{"sparsity": 0.5, "op_types": ["Linear"]}], "levle")


# -- Lottery ticket ------------------------------------------------------------------------------------------

def test_lottery_ticket_rewinds_survivors_to_their_initial_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    initial = model[0].weight.detach().clone()
    seen = []

    def loop(model, optimizer, criterion, scheduler, max_steps, max_epochs):
        seen.append(model[0].weight.detach().clone())  # the weights each training run starts from
        for _ in range(3):
            optimizer.zero_grad()
            criterion(model(torch.randn(4, 8)), torch.randn(4, 8)).backward()
            optimizer.step()

    from nnic.evaluator import Evaluator

    evaluator = Evaluator(loop, lambda p: torch.optim.SGD(p, lr=0.5), nn.MSELoss())
    pruner = nnic.pruner("lottery_ticket", model, [{"sparsity": 0.75, "op_types": ["Linear"]}], total_iteration=2,
                         evaluator=evaluator, training_steps=3)
    _, masks = pruner.compress()
    assert [r.sparsity["0"] for r in pruner.history] == [pytest.approx(0.5), 0.75]
    for start, result in zip(seen[1:], pruner.history):  # seen[0] is the first, dense training run
        keep = result.masks["0"]["weight"]
        assert torch.equal(start, initial * keep)
    assert_exact(masks, model, 0.75)


def test_lottery_ticket_on_digits(digits, dense):
    model, dense_accuracy = dense
    evaluator = digits.evaluator(lr=3e-3)
    pruner = nnic.pruner("lottery_ticket", model, [{"sparsity": 0.5, "op_types": CONV_LINEAR}], total_iteration=2,
                         evaluator=evaluator, training_epochs=4, train_first=False)
    _, masks = pruner.compress()
    assert_exact(masks, model, 0.5)
    assert evaluator.evaluate(model) >= dense_accuracy - MARGIN


# -- Movement ------------------------------------------------------------------------------------------------

def test_movement_schedule():
    from nnic.builtins.movement import MovementPruner
    from nnic.evaluator import Evaluator

    evaluator = Evaluator(lambda *a: None, lambda p: torch.optim.SGD(p, lr=0.1), nn.MSELoss())
    pruner = MovementPruner(nn.Sequential(nn.Linear(4, 4)), [{"sparsity": 0.5, "op_types": ["Linear"]}],
                            evaluator=evaluator, training_steps=100)
    assert (pruner.warm_up_step, pruner.cool_down_beginning_step) == (10, 70)
    assert [pruner.fraction(s) for s in (0, 10, 40, 70, 100)] == [0, 0, pytest.approx(1 - 0.5**3), 1, 1]
    with pytest.raises(ValueError, match="warm_up_step < cool_down_beginning_step"):
        MovementPruner(nn.Sequential(nn.Linear(4, 4)), [{"sparsity": 0.5, "op_types": ["Linear"]}],
                       evaluator=evaluator, training_steps=100, warm_up_step=50, cool_down_beginning_step=50)


def test_movement_pruning_on_digits(digits, dense):
    model, dense_accuracy = dense
    evaluator = digits.evaluator()
    sparsity_seen = []
    pruner = nnic.pruner("movement", model, [{"sparsity": 0.5, "op_types": CONV_LINEAR}], evaluator=evaluator,
                         training_steps=200)
    original_update = pruner._update

    def spy(step):
        original_update(step)
        mm = pruner._movement_masks()["fc1"]
        sparsity_seen.append(1 - float(mm.mask.float().mean()))

    pruner._update = spy
    _, masks = pruner.compress()
    assert sparsity_seen[19] == 0 and 0 < sparsity_seen[60] < 0.5 and sparsity_seen[-1] == 0.5
    assert all(b >= a - 0.05 for a, b in zip(sparsity_seen, sparsity_seen[1:]))
    assert_exact(masks, model, 0.5)
    assert not any(type(p).__name__ == "MovementMask" for p in model.fc1.parametrizations["weight"])
    assert evaluator.evaluate(model) >= dense_accuracy - MARGIN


# -- ADMM ----------------------------------------------------------------------------------------------------

def test_admm_pulls_weights_to_a_sparse_solution_that_one_shot_pruning_lacks(digits, dense):
    model, dense_accuracy = dense
    level_model = type(model)()
    level_model.load_state_dict(model.state_dict())
    nnic.pruner("level", level_model, [{"sparsity": 0.5, "op_types": CONV_LINEAR}]).compress()
    evaluator = digits.evaluator()
    one_shot = evaluator.evaluate(level_model)
    pruner = nnic.pruner("admm", model, [{"sparsity": 0.5, "rho": 0.1, "op_types": CONV_LINEAR}],
                         evaluator=evaluator, iterations=4, training_epochs=1)
    _, masks = pruner.compress()
    assert_exact(masks, model, 0.5)
    admm = evaluator.evaluate(model)
    assert admm > one_shot + 3  # measured: 95.0 vs 88.2, before any fine-tuning
    evaluator.train(model, max_epochs=2)
    assert evaluator.evaluate(model) >= dense_accuracy - MARGIN
    assert math.isclose(pruner.sparsity()["fc1.weight"], 0.5)


def test_scheduled_pruning_with_speedup_between_iterations_shrinks_the_model_for_real(digits, dense):
    model, dense_accuracy = dense
    evaluator = digits.evaluator()
    config = [{"sparsity": 0.5, "op_names": ["conv1", "conv2", "fc1"]}]
    pruner = nnic.pruner("agp", model, config, pruning_algorithm="l1norm", total_iteration=2, evaluator=evaluator,
                         training_epochs=1, speedup=True, dummy_input=digits.x_test[:2])
    pruner.compress()
    # Half of every selected layer's output channels is gone from the architecture, not just masked.
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (8, 16, 32)
    assert (model.bn1.num_features, model.fc1.in_features, model.fc2.in_features) == (8, 16 * 16, 32)
    assert evaluator.evaluate(model) >= dense_accuracy - 2 * MARGIN
