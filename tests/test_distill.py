"""Distillation recovers more accuracy than plain fine-tuning at the same step budget (a digits CNN pruned to
half its channels, trained here on scikit-learn's digits), and plugs into an Evaluator."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnic
from nnic.distill import distill, distillation_loop
from nnic.evaluator import Evaluator, accuracy

datasets = pytest.importorskip("sklearn.datasets")


def digits():
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1200], perm[1200:]


def batches(x, y, idx, size, seed):
    p = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    return [(x[p[i:i + size]], y[p[i:i + size]]) for i in range(0, len(p), size)]


@pytest.fixture(scope="module")
def setup():
    x, y, train, test = digits()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for epoch in range(5):
        for xb, yb in batches(x, y, train, 32, epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(xb), yb).backward()
            opt.step()
    return teacher.eval(), x, y, train, test


def test_distillation_recovers_more_than_plain_fine_tuning_at_the_same_step_budget(setup):
    teacher, x, y, train, test = setup
    test_data = batches(x, y, test, 600, 0)
    pruned = copy.deepcopy(teacher)
    nnic.pruner("l1norm", pruned, [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).compress()
    results = {"plain": [], "distilled": []}
    for seed in (0, 1):
        few = batches(x, y, train[:200], 16, seed)  # a small labelled budget: 26 steps
        for kind, alpha in (("plain", 0.0), ("distilled", 0.5)):
            torch.manual_seed(seed)
            student = copy.deepcopy(pruned)
            steps = distill(student, teacher, few, steps=2 * len(few), alpha=alpha, progress=False)
            assert steps == 2 * len(few)
            results[kind].append(accuracy(student, test_data))
    plain, distilled = (sum(v) / len(v) for v in results.values())
    assert accuracy(teacher, test_data) > 85 and distilled > plain, results


def test_hidden_states_are_matched_and_the_loop_fits_an_evaluator(setup):
    teacher, x, y, train, _ = setup
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[2].weight.mul_(0.5)
    data = batches(x, y, train[:64], 16, 0)
    with torch.no_grad():
        before = float(nn.functional.mse_loss(student[:4](x[:64]), teacher[:4](x[:64])))
    evaluator = Evaluator(distillation_loop(teacher, data, hidden_states=[("3", "3")], hidden_weight=10.0,
                                            progress=False), lambda p: torch.optim.Adam(p, 1e-3), nn.CrossEntropyLoss())
    assert evaluator.train(student, max_steps=8) == 8
    with torch.no_grad():
        after = float(nn.functional.mse_loss(student[:4](x[:64]), teacher[:4](x[:64])))
    assert after < before


def test_mistakes_are_named(setup):
    teacher, x, y, train, _ = setup
    with pytest.raises(ValueError, match="temperature"):
        distillation_loop(teacher, [], temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loop(teacher, [], alpha=2)
    with pytest.raises(ValueError, match=r"hidden_states: \['nope'\] are not modules of the student"):
        distill(copy.deepcopy(teacher), teacher, batches(x, y, train[:16], 16, 0), steps=1,
                hidden_states=[("nope", "3")], progress=False)
