"""The algorithm docs: the plugin tutorial's code runs as a plugin, the README table lists every algorithm."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import nnic
import nnic.plugins
from nnic.evaluator import LoopEvaluator

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def tutorial_plugin():
    code = next(b for b in python_blocks(ROOT / "docs/writing-a-plugin.md") if "class TaylorLitePruner" in b)
    module = types.ModuleType("nnic_myalgo")
    exec(compile(code, "docs/writing-a-plugin.md", "exec"), module.__dict__)
    nnic.plugins.register(module, name="myalgo")
    yield module
    nnic.plugins.reload()


def test_the_tutorial_plugin_registers_and_prunes(tutorial_plugin):
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    evaluator = LoopEvaluator(data, lambda p: torch.optim.SGD(p, lr=0.1), nn.CrossEntropyLoss())
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    pruner = nnic.pruner("taylor_lite", model, [{"sparsity": 0.5, "warmup_steps": 5, "op_types": ["Linear"]}],
                         evaluator=evaluator)
    _, masks = pruner.compress()
    assert int((~masks["0"]["weight"]).sum()) == 64 and int((~masks["2"]["weight"]).sum()) == 24
    assert evaluator.total_steps == 5


def test_the_readme_table_lists_every_builtin_algorithm():
    section = (ROOT / "README.md").read_text().split("## Algorithms", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9_:]+)`", section, flags=re.M))
    listed |= set(re.findall(r"^\| `[a-z0-9_]+`, `([a-z0-9_]+)`", section, flags=re.M))  # rows naming two algorithms
    builtins = {p.name for p in nnic.list_plugins("pruner") + nnic.list_plugins("quantizer") if p.distribution == "nnic"}
    assert builtins <= listed, f"README's algorithm table lacks {sorted(builtins - listed)}"
