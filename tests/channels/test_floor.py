"""nnic.channels is a floor: it imports nothing above it, and the rules it propagates with are handed to it."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

from nnic.builtins.speedup_rules import builtin_rules
from nnic.channels import RuleTable, analyze, channel_groups

ABOVE = ("nnic.speedup", "nnic.pruning", "nnic.plugins", "nnic.registry", "nnic.builtins", "nnic.quantization")


def test_importing_channels_loads_nothing_above_it():
    code = ("import sys, nnic; before = set(sys.modules); import nnic.channels; "
            f"print(sorted(m for m in set(sys.modules) - before if m.startswith({ABOVE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


X = torch.randn(1, 3, 5, 5)


def test_channel_groups_couple_what_the_given_rules_couple():
    groups = channel_groups(Residual(), X, builtin_rules())
    assert groups["a"] == groups["b"]  # the residual add: channel k of a and of b go together
    assert len(set(groups["a"])) == 4 and set(groups["a"]).isdisjoint(groups["c"])


def test_without_rules_nothing_is_known_and_the_model_is_untouched():
    model = Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert channel_groups(model, X, []) == {}
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_analyze_runs_one_propagation_in_eval_mode_and_restores_modes():
    model = Residual().train()
    prop = analyze(model, X, RuleTable(builtin_rules()))
    assert model.training and all(m.training for m in model.modules())
    assert {name for name, _ in prop.state.slots} == {"a", "b", "c"}
