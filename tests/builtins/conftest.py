"""Shared fixtures: scikit-learn's bundled digits (8x8 images, no download), a small CNN, one trained dense model.

Everything is seeded and single-threaded, so each test's numbers are the same on every run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnic.evaluator import LoopEvaluator

DENSE_EPOCHS = 12


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Digits:
    """Train/test tensors and seeded loaders."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        self.x_train, self.y_train, self.x_test, self.y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    def train_loader(self, seed: int = 0, batch_size: int = 64) -> torch.utils.data.DataLoader:
        dataset = torch.utils.data.TensorDataset(self.x_train, self.y_train)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                           generator=torch.Generator().manual_seed(seed))

    def test_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.x_test, self.y_test)]

    def calibration_batches(self, n: int = 4, batch_size: int = 64) -> list[torch.Tensor]:
        return [self.x_train[i * batch_size:(i + 1) * batch_size] for i in range(n)]

    def evaluator(self, lr: float = 1e-3, seed: int = 0) -> LoopEvaluator:
        return LoopEvaluator(self.train_loader(seed), lambda p: torch.optim.Adam(p, lr=lr), nn.CrossEntropyLoss(),
                             eval_data=self.test_batches(), dummy_input=self.x_test[:1])


@pytest.fixture(autouse=True)
def _deterministic():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> Digits:
    return Digits()


@pytest.fixture(scope="session")
def _dense_state(digits: Digits) -> tuple[dict, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitsCNN()
        evaluator = digits.evaluator(lr=3e-3)
        evaluator.train(model, max_epochs=DENSE_EPOCHS)
        return copy.deepcopy(model.state_dict()), evaluator.evaluate(model)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def dense(_dense_state) -> tuple[DigitsCNN, float]:
    """A fresh copy of the trained dense CNN and its test accuracy (percent)."""
    model = DigitsCNN()
    model.load_state_dict(_dense_state[0])
    return model, _dense_state[1]
