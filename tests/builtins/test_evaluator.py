"""The evaluator: the user's loop, re-created optimizers, enforced step limits, loss and step hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic.evaluator
from nnic.evaluator import Evaluator, LoopEvaluator


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def endless_loop(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs):
    """A user loop that ignores both limits."""
    while True:
        for x, y in data():
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()


def test_max_steps_is_enforced_even_when_the_loop_ignores_it():
    evaluator = Evaluator(endless_loop, torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), nn.CrossEntropyLoss())
    assert evaluator.train(nn.Linear(8, 3), max_steps=7) == 7
    assert evaluator.total_steps == 7


def test_each_train_call_gets_a_fresh_optimizer_over_the_current_parameters():
    made = []

    def factory(params):
        made.append(torch.optim.Adam(params, lr=1e-2))
        return made[-1]

    model = nn.Linear(8, 3)
    evaluator = LoopEvaluator(data(), factory, nn.CrossEntropyLoss())
    evaluator.train(model, max_steps=2)
    model.extra = nn.Parameter(torch.zeros(2))  # an algorithm added a parameter (an LSQ step, say)
    evaluator.train(model, max_steps=2)
    assert len(made) == 2 and made[0] is not made[1]
    assert sum(p.numel() for group in made[1].param_groups for p in group["params"]) == 8 * 3 + 3 + 2


def test_an_optimizer_instance_is_recreated_with_its_hyperparameters():
    template = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    seen = []
    evaluator = Evaluator(lambda model, opt, *rest: seen.append(opt), template, nn.MSELoss())
    model = nn.Linear(2, 2)
    evaluator.train(model)
    assert type(seen[0]) is torch.optim.SGD and seen[0] is not template
    assert seen[0].defaults["momentum"] == 0.9 and seen[0].defaults["lr"] == 0.05
    assert seen[0].param_groups[0]["params"][0] is model.weight


def test_schedulers_are_factories_not_instances():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="lr_scheduler: expected a callable optimizer -> scheduler"):
        Evaluator(endless_loop, optimizer, nn.MSELoss(), lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1))
    schedulers = []

    def make(opt):
        schedulers.append(torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
        return schedulers[-1]

    evaluator = LoopEvaluator(data(), lambda p: torch.optim.SGD(p, lr=1.0), nn.CrossEntropyLoss(), lr_scheduler=make)
    evaluator.train(nn.Linear(8, 3), max_epochs=3)
    evaluator.train(nn.Linear(8, 3), max_epochs=1)
    assert schedulers[0].get_last_lr() == [0.125] and schedulers[1].get_last_lr() == [0.5]


def test_loss_hooks_are_added_and_step_hooks_see_every_step():
    losses, steps = [], []

    def loop(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs):
        for x, y in data():
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            losses.append(float(loss.detach()))
            loss.backward()
            optimizer.step()

    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    evaluator = Evaluator(loop, lambda p: torch.optim.SGD(p, lr=0.0), nn.CrossEntropyLoss())
    evaluator.train(model)
    plain = list(losses)
    losses.clear()
    evaluator.train(model, loss_hooks=[lambda: torch.tensor(10.0)], step_hooks=[steps.append])
    assert losses == pytest.approx([v + 10 for v in plain])
    assert steps == [1, 2, 3, 4]


def test_evaluate_runs_in_eval_mode_without_gradients_and_restores_the_mode():
    modes = []

    def score(model):
        modes.append((model.training, torch.is_grad_enabled()))
        return 0.5

    model = nn.Sequential(nn.Linear(8, 3), nn.Dropout())
    evaluator = Evaluator(endless_loop, lambda p: torch.optim.SGD(p, lr=0.1), nn.MSELoss(), evaluating_func=score)
    assert evaluator.evaluate(model) == 0.5
    assert modes == [(False, False)] and model.training
    with pytest.raises(RuntimeError, match="no evaluating_func"):
        Evaluator(endless_loop, lambda p: None, nn.MSELoss()).evaluate(model)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_limits_are_refused(bad):
    evaluator = Evaluator(endless_loop, lambda p: torch.optim.SGD(p, lr=0.1), nn.MSELoss())
    with pytest.raises(ValueError, match="max_steps: expected a positive int"):
        evaluator.train(nn.Linear(8, 3), max_steps=bad)


def test_the_documented_example_runs():
    example = nnic.evaluator.__doc__.split("runs it)::", 1)[1]
    namespace: dict = {}
    exec(compile("\n".join(line[4:] for line in example.splitlines()), "<example>", "exec"), namespace)
    masks = namespace["masks"]
    assert int((~masks["0"]["weight"]).sum()) == 16 * 64 // 2
    assert namespace["evaluator"].evaluate(namespace["model"]) > 25
