"""A small digits classifier trained in a second or two (sklearn's 8x8 digits, shipped with scikit-learn).

Importable by tests and by worker processes (``digits:spec`` is an auto-compress spec when tests/auto is on
the path).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch
from torch import nn

from nnic.evaluator import LoopEvaluator


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): a fixed 75/25 split, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.75 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def evaluator(batch_size: int = 64) -> LoopEvaluator:
    x, y, xt, yt = data()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    test = [(xt, yt)]
    return LoopEvaluator(train, lambda p: torch.optim.Adam(p, lr=3e-3), nn.CrossEntropyLoss(), eval_data=test,
                         dummy_input=xt[:1])


def trained_model(width: int = 256, epochs: int = 8, seed: int = 0) -> nn.Module:
    """An MLP 64 -> width -> width -> 10, about 97 % accurate on the held-out quarter."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    evaluator().train(model, max_epochs=epochs)
    return model.eval()


def spec() -> tuple[nn.Module, LoopEvaluator, torch.Tensor]:
    """The spec a worker imports (``digits:spec`` with tests/auto on the path)."""
    return trained_model(), evaluator(), data()[2][:64]


def search_options(n_trials: int = 8, fine_tune_steps: int = 30) -> dict:
    """auto_compress options shared by the multi-process tests (kept small: every trial takes about a second)."""
    return {"constraints": {"flops": 0.6}, "n_trials": n_trials, "fine_tune_steps": fine_tune_steps,
            "space": {"bits": [8, "float"], "sparsity": (0.0, 0.8)}, "measure": {"repeats": 5, "warmup": 1},
            "strategy": "random"}


def spec_with_options() -> tuple:
    """``digits:spec_with_options``: the spec plus the search options (the first worker creates the study).

    With ``NNIC_TEST_START_TOGETHER=DIR:N`` the worker waits, its model trained, until N workers have reached this
    point (each leaves a file in DIR), so a test that asks every worker to run trials does not depend on how fast
    each process imports torch and trains: a worker ready seconds before the other could otherwise take them all.
    """
    ready = os.environ.get("NNIC_TEST_START_TOGETHER")
    loaded = spec()
    if ready:
        folder, count = ready.rsplit(":", 1)
        _wait_for_workers(Path(folder), int(count))
    return (*loaded, search_options(int(os.environ.get("NNIC_TEST_TRIALS", "8"))))


def _wait_for_workers(folder: Path, count: int, timeout_s: float = 600.0) -> None:
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"NNIC_TEST_START_TOGETHER: {count} workers expected in {folder}, "
                               f"{len(list(folder.iterdir()))} arrived within {timeout_s:.0f} s")
        time.sleep(0.05)
