"""nnic.export_onnx on float and sped-up (pruned) models: the file runs in onnxruntime and matches the model, at
the example's batch and at other batch (and sequence) sizes; it is written atomically; bad input is named."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nnic
from nnic.export import ExportError, VerificationError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def run(path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_float_model_exports_verified_with_dynamic_batch(tmp_path):
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    result = nnic.export_onnx(model, x, tmp_path / "m.onnx")
    assert result.kind == "float" and result.opset == 17 and result.verified
    assert result.errors["output"] < 1e-5
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x5 = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = model(x5).numpy()
    np.testing.assert_allclose(run(tmp_path / "m.onnx", {"input": x5})[0], expected, rtol=1e-4, atol=1e-5)


def test_every_module_keeps_its_mode(tmp_path):
    model = small_cnn().train()
    model[1].eval()  # a frozen BatchNorm inside a training model, or an eval model in a fresh (training) wrapper
    nnic.export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    assert model.training and not model[1].training and model[0].training


def test_speedup_model_exports(tmp_path):
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    pruner = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    nnic.speedup_model(model, x, masks)
    assert model[0].out_channels == 8
    result = nnic.export_onnx(model, x, tmp_path / "pruned.onnx")
    assert result.errors["output"] < 1e-4


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_torchvision_after_speedup(tmp_path, name):
    """A fast subset of torchvision's families (all of them: ``bench/torchvision_coverage.py --onnx``)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    generator = torch.Generator().manual_seed(1)
    masks = {}
    for layer, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] > 1:
            keep = torch.ones(m.weight.shape[0], dtype=torch.bool)
            keep[torch.randperm(keep.numel(), generator=generator)[: keep.numel() // 2]] = False
            shape = (-1,) + (1,) * (m.weight.dim() - 1)
            masks[layer] = {"weight": keep.reshape(shape).expand_as(m.weight).clone(),
                            "bias": None if m.bias is None else keep.clone()}
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nnic.speedup_model(model, x, masks)
    assert sum(p.numel() for p in model.parameters()) < before
    result = nnic.export_onnx(model, x, tmp_path / f"{name}.onnx")
    assert result.errors["output"] <= 1e-4


class TwoHeads(nn.Module):
    """Keyword inputs (ids and mask) and a dict output with a None and a nested tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        return {"hidden": h, "unused": None, "heads": (self.proj(h), h.sum(dim=1))}


def test_dict_inputs_nested_outputs_and_dynamic_sequence(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    ids, mask = torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    result = nnic.export_onnx(model, {"input_ids": ids, "attention_mask": mask}, tmp_path / "m.onnx")
    assert result.input_names == ["input_ids", "attention_mask"]
    assert result.output_names == ["hidden", "heads.0", "heads.1"]
    ids2, mask2 = torch.randint(0, 50, (3, 11)), torch.ones(3, 11, dtype=torch.long)
    got = run(tmp_path / "m.onnx", {"input_ids": ids2, "attention_mask": mask2})
    with torch.no_grad():
        out = model(ids2, mask2)
    np.testing.assert_allclose(got[1], out["heads"][0].numpy(), rtol=1e-5, atol=1e-6)


class Spectral(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()


def test_unexportable_op_names_the_module(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), Spectral()), nn.Linear(5, 2))
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"module '1\.1' \(Spectral\) cannot be exported"):
        nnic.export_onnx(model, torch.randn(2, 8), path)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary left behind


def test_failed_export_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError):
        nnic.export_onnx(nn.Sequential(Spectral()), torch.randn(2, 8), path)
    assert path.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


class DropsBatch(nn.Module):
    """Batch-dependent in a way the trace freezes: verification at twice the batch catches it."""

    def forward(self, x):
        return x * float(x.shape[0])


def test_verification_checks_the_dynamic_batch(tmp_path):
    with pytest.raises(VerificationError, match="at twice the batch: output 'output' diverges"):
        nnic.export_onnx(DropsBatch(), torch.randn(2, 4), tmp_path / "m.onnx")
    nnic.export_onnx(DropsBatch(), torch.randn(2, 4), tmp_path / "m.onnx", dynamic_axes=False)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"int8_format": "fp8"}, ValueError, "int8_format: expected one of"),
    ({"opset": 9}, ValueError, r"opset: expected an int in \[13, 20\]"),
    ({"tolerance": -1.0}, ValueError, "tolerance: expected a positive number"),
    ({"dynamic_axes": "yes"}, TypeError, "dynamic_axes: expected a bool or a dict"),
    ({"output_names": ["a", "b"]}, ValueError, "output_names: the model has 1 outputs, got 2 names"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        nnic.export_onnx(nn.Linear(4, 2), torch.randn(1, 4), tmp_path / "m.onnx", **kwargs)


def test_bad_example_input_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"example_input\['mask'\]: expected a tensor, got list"):
        nnic.export_onnx(nn.Linear(4, 2), {"x": torch.randn(1, 4), "mask": [1, 2]}, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        nnic.export_onnx(lambda x: x, torch.randn(1, 4), tmp_path / "m.onnx")


def test_multihead_attention_exports_through_its_slow_path_and_the_fast_path_is_restored(tmp_path):
    """In eval mode without grad, nn.MultiheadAttention runs a fused native op that has no ONNX form (torchvision's
    ViT, nn.TransformerEncoderLayer); the export traces the equivalent slow path instead."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    assert torch.backends.mha.get_fastpath_enabled()
    result = nnic.export_onnx(model, torch.randn(2, 5, 16), tmp_path / "encoder.onnx")
    assert result.errors["output"] <= nnic.export.TOLERANCES["float"]
    assert torch.backends.mha.get_fastpath_enabled()
