"""Sparse layers (nnic.sparse.SparseLinear) export dense and match, float and int8. Runs where nnic has sparse
modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic

pytest.importorskip("onnx")
sparse = pytest.importorskip("nnic.sparse.modules")


def sparse_layer(dtype: str, seed: int) -> nn.Module:
    """A 64 -> 32 SparseLinear with about 80 % zeros, float32 values or int8 codes."""
    from nnic.quantization.modules import Int8Linear

    torch.manual_seed(seed)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.8] = 0
    return sparse.SparseLinear.from_linear(lin) if dtype == "float32" else \
        sparse.SparseLinear.from_int8(Int8Linear.from_float(lin))


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_sparse_linear_exports_dense(tmp_path, dtype):
    model = nn.Sequential(sparse_layer(dtype, seed=0), nn.ReLU(), nn.Linear(32, 4)).eval()
    result = nnic.export_onnx(model, torch.randn(3, 64), tmp_path / "s.onnx")
    assert result.handled == {"int8": ["0"]}
    assert result.errors["output"] <= (1e-4 if dtype == "float32" else nnic.export.TOLERANCES["int8"])


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_fused_activation_is_exported(tmp_path, dtype):
    """A SparseLinear applying GELU exports the GELU after its product: the graph's output is the module's."""
    layer = sparse_layer(dtype, seed=1)
    layer.activation = "gelu"
    model = nn.Sequential(layer, nn.Linear(32, 4)).eval()
    result = nnic.export_onnx(model, torch.randn(3, 64), tmp_path / "s.onnx")
    assert result.errors["output"] <= (1e-4 if dtype == "float32" else nnic.export.TOLERANCES["int8"])
