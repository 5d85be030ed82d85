"""An activation fused into the int8 GEMM's epilogue: kernels (``activation=``), ``Int8Linear(activation=...)``,
``fuse_activation`` and its ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nnic import kernels
from nnic.quantization import Int8Linear, activation_kind, fuse_activation, takes_activation

PATHS = kernels.gemm_paths()
#: Float32 GELU from the epilogue's erf (max abs error ``ERF_ATOL``) against the exact erf in float64: the erf's
#: error reaches the result multiplied by ``x / 2`` (``gelu = x/2 * (1 + erf(x/√2))``), so the bound grows with |x|
#: where GELU itself is near 0 (x around -3, seen by hypothesis: 1.06e-6 against a flat 1.01e-6).
GELU_ATOL, GELU_RTOL, ERF_ATOL = 1e-6, 2e-6, 4e-7
#: Against torch's float32 GELU: both sides round ``1 + erf(x/√2)`` in float32, which cancels for negative x.
TORCH_GELU_ATOL = 3e-6


def gelu64(v: np.ndarray) -> np.ndarray:
    return np.array([0.5 * t * (1.0 + math.erf(t / math.sqrt(2.0))) for t in v.astype(np.float64).ravel()]).reshape(
        v.shape)


@st.composite
def case(draw):
    m, k, n = draw(st.sampled_from([1, 3, 13, 40])), draw(st.sampled_from([5, 64, 257])), draw(
        st.sampled_from([1, 31, 70]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((m, k)) * draw(st.sampled_from([0.1, 1.0, 8.0]))).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-3, 2e-2, n).astype(np.float32)
    zero = rng.integers(-9, 9, n).astype(np.int32) if draw(st.booleans()) else None
    bias = rng.standard_normal(n).astype(np.float32)
    return x, kernels.pack_int8_weight(w, scale, zero), bias


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None)
@given(c=case(), act=st.sampled_from(["per_token", "per_tensor"]))
def test_fused_activation_is_the_activation_of_the_plain_output(path, c, act):
    x, packed, bias = c
    plain = kernels.int8_linear(x, packed, bias, act=act, path=path)
    relu = kernels.int8_linear(x, packed, bias, act=act, path=path, activation="relu")
    gelu = kernels.int8_linear(x, packed, bias, act=act, path=path, activation="gelu")
    np.testing.assert_array_equal(relu, np.maximum(plain, 0))
    want = gelu64(plain)
    bound = GELU_ATOL + GELU_RTOL * np.abs(want) + ERF_ATOL * np.abs(plain) / 2
    assert np.all(np.abs(gelu - want) <= bound), np.abs(gelu - want).max()


def test_fused_gelu_matches_torch_gelu_on_torch_tensors():
    torch.manual_seed(0)
    lin = nn.Linear(96, 300)
    q = Int8Linear.from_float(lin)
    x = torch.randn(4, 7, 96) * 3
    plain = q(x)
    q.activation = "gelu"
    got = q(x)
    assert got.shape == (4, 7, 300) and got.dtype == torch.float32
    torch.testing.assert_close(got, F.gelu(plain), atol=TORCH_GELU_ATOL, rtol=GELU_RTOL)
    assert "activation=gelu" in repr(q)


def test_bad_activation_names_are_refused():
    packed = kernels.pack_int8_weight(np.zeros((4, 8), np.int8), 1.0)
    with pytest.raises(ValueError, match="activation must be None or one of .*'swish'"):
        kernels.int8_linear(np.zeros((2, 8), np.float32), packed, activation="swish")
    with pytest.raises(ValueError, match="activation must be None or one of"):
        Int8Linear(8, 4, activation="tanh")
    q4, s4 = kernels.quantize_int4_weight(torch.randn(32, 64), 32)
    p4 = kernels.pack_int4_weight(q4, s4, 32)
    with pytest.raises(ValueError, match="int4 linear has no fused activation"):
        p4.linear(np.zeros((1, 64), np.float32), np.zeros((1, 32), np.float32), None, "per_token", True, None, None,
                  None, "gelu")


class MLP(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(16, 48), act, nn.Linear(48, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


@pytest.mark.parametrize("act, kind", [(nn.GELU(), "gelu"), (nn.ReLU(), "relu")])
def test_fuse_activation_keeps_the_output_and_moves_the_activation(act, kind):
    torch.manual_seed(1)
    m = MLP(act).eval()
    m.up, m.down = Int8Linear.from_float(m.up), Int8Linear.from_float(m.down)
    x = torch.randn(5, 16)
    before = m(x)
    assert fuse_activation(m, "up", "act") == kind
    assert isinstance(m.act, nn.Identity) and m.up.activation == kind
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=1e-5)


def test_fuse_activation_refuses_what_it_cannot_fuse():
    m = MLP(nn.GELU(approximate="tanh"))
    with pytest.raises(TypeError, match=r"MLP.up must be a layer that takes a fused activation .* got Linear"):
        fuse_activation(m, "up", "act")
    m.up = Int8Linear.from_float(m.up)
    with pytest.raises(ValueError, match=r"MLP.act \(GELU\) is not an activation"):
        fuse_activation(m, "up", "act")
    m.act = nn.ReLU()
    fuse_activation(m, "up", "act")
    with pytest.raises(ValueError, match="already applies 'relu'"):
        fuse_activation(m, "up", "act")
    assert activation_kind(nn.SiLU()) is None and activation_kind(nn.GELU()) == "gelu"


def test_any_layer_that_declares_it_takes_a_fused_activation():
    """The layers are found by a declaration, not a list: a third-party layer whose class says
    ``takes_fused_activation = True`` (and applies ``self.activation``) is fused like nnic's own."""

    class Epilogue(nn.Linear):
        takes_fused_activation = True
        activation = None

        def forward(self, x):
            y = super().forward(x)
            return torch.relu(y) if self.activation == "relu" else y

    torch.manual_seed(4)
    m = MLP(nn.ReLU()).eval()
    m.up = Epilogue(16, 48)
    x = torch.randn(3, 16)
    before = m(x)
    assert takes_activation(m.up) and not takes_activation(m.down)
    assert fuse_activation(m, "up", "act") == "relu"
    torch.testing.assert_close(m(x), before)


@pytest.mark.parametrize("fmt", ["integer", "qdq"])
def test_fused_activation_exports_to_onnx(tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    import nnic

    torch.manual_seed(2)
    m = MLP(nn.GELU()).eval()
    m.up, m.down = Int8Linear.from_float(m.up), Int8Linear.from_float(m.down)
    fuse_activation(m, "up", "act")
    result = nnic.export_onnx(m, torch.randn(3, 16), tmp_path / "mlp.onnx", int8_format=fmt)
    assert max(result.errors.values()) <= nnic.export.TOLERANCES[result.kind]


def test_a_fused_layer_goes_sparse_with_its_activation():
    """The sparse kernels apply a fused activation too: ``SparseLinear.from_int8`` and ``sparsify`` keep it, and the
    output is the fused int8 layer's."""
    from nnic.sparse import SparseLinear, sparsify

    torch.manual_seed(3)
    m = MLP(nn.ReLU()).eval()
    with torch.no_grad():
        m.up.weight[:, ::2] = 0  # half the weights are zero: a sparsify candidate
    m.up, m.down = Int8Linear.from_float(m.up), Int8Linear.from_float(m.down)
    fuse_activation(m, "up", "act")
    x = torch.randn(4, 16)
    want = m(x)
    assert SparseLinear.from_int8(m.up).activation == "relu"
    report = sparsify(m, x, layers=["up"], max_density=0.9, rounds=1, min_speedup=0.0)
    assert "up" in report.sparse_layers and isinstance(m.up, SparseLinear) and m.up.activation == "relu"
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


def test_a_fused_relu_keeps_a_nan_as_torch_does():
    """A NaN bias gives NaN outputs through the fused ReLU, as ``torch.relu`` gives, not zeros."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.bias[0] = float("nan")
    q = Int8Linear.from_float(lin)
    q.activation = "relu"
    y = q(torch.randn(3, 8))
    assert bool(y[:, 0].isnan().all()) and not bool(y[:, 1:].isnan().any())
