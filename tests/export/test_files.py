"""Where an export lands: one model file, and past protobuf's 2 GB limit one data file beside it, never the
exporter's file per tensor (a failed export leaves nothing: test_float.py)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import nnic

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def _export_like_torch_past_2gb(monkeypatch):
    """torch's exporter, then its >2 GB layout: every tensor in its own file beside the model."""
    real = torch.onnx.export

    def export(model, args, f, **kw):
        real(model, args, f, **kw)
        proto = onnx.load(f)
        onnx.save_model(proto, f, save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)

    monkeypatch.setattr(torch.onnx, "export", export)


def test_a_small_model_is_one_file_and_the_folder_holds_nothing_else(tmp_path):
    nnic.export_onnx(_model(), torch.randn(2, 64), tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_external_weights_are_gathered_into_one_data_file_that_onnxruntime_reads(tmp_path, monkeypatch):
    _export_like_torch_past_2gb(monkeypatch)
    result = nnic.export_onnx(_model(), torch.randn(2, 64), tmp_path / "m.onnx", verify=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert result.errors and max(result.errors.values()) < 1e-5
    locations = {e.value for t in onnx.load(tmp_path / "m.onnx", load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}

