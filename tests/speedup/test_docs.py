"""The speedup rule examples in docs/plugin-hooks.md run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"


def test_the_speedup_rule_example_runs(fresh_registry, monkeypatch):
    section = DOCS.read_text().split("## register_speedup_rules(register)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("docs_speedup_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOCS), "exec"), module.__dict__)


def test_the_rule_for_a_new_op_example_runs(fresh_registry, monkeypatch):
    section = DOCS.read_text().split("### Where a rule goes", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("docs_speedup_op_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
