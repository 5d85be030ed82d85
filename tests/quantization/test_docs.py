"""The register_lowerings example in docs/plugin-hooks.md runs as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"


def test_the_lowering_example_runs(fresh_registry, monkeypatch):
    section = DOCS.read_text().split("## register_lowerings(register)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("docs_lowering_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
