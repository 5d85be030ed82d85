"""The export handler example in docs/plugin-hooks.md runs as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin-hooks.md"

pytest.importorskip("onnx")


def test_hook_example_runs(fresh_registry, monkeypatch):
    section = DOCS.read_text().split("## register_onnx_exporters(register)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("docs_onnx_export_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    assert module.result.verified and module.result.errors["output"] < 1e-4  # onnxruntime is a test dependency
