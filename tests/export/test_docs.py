"""The export handler example in docs/plugin-hooks.md runs as written."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")


def test_hook_example_runs(plugin_hooks_example):
    module = plugin_hooks_example("## register_onnx_exporters(register)", "docs_onnx_export_example")
    assert module.result.verified and module.result.errors["output"] < 1e-4  # onnxruntime is a test dependency
