"""Fixtures for the auto-compression tests: a digits MLP trained once per session, helpers for subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from . import digits

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def model():
    return digits.trained_model()


@pytest.fixture
def evaluator():
    return digits.evaluator()


@pytest.fixture(scope="session")
def example():
    return digits.data()[2][:64]


@pytest.fixture(autouse=True)
def _one_thread():
    """Latency is measured with one thread; keep the rest of the test on one as well (2 shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def subprocess_env() -> dict[str, str]:
    """Environment for worker processes: the digits spec importable as ``digits:spec``, built-in plugins only
    (the transformers rules are irrelevant here and slow to import), one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env["NNIC_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


PYTHON = sys.executable
