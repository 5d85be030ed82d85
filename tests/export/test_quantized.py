"""nnic.export_onnx on models from nnic.quantization_speedup: int8 as integer ops or QDQ, int4 as MatMulNBits;
custom modules through export handlers (registered, or passed in), and verification that names the output."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import nnic
from nnic.export import ExportError, SymbolicStandIn, VerificationError
from nnic.quantization import Int8Linear

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 64), nn.GELU(), nn.Linear(64, 10)).eval()


def op_types(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize(("fmt", "expected", "absent"), [
    ("integer", {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}, {"DequantizeLinear"}),
    ("qdq", {"DynamicQuantizeLinear", "DequantizeLinear", "MatMul", "Conv"}, {"MatMulInteger", "ConvInteger"}),
])
def test_int8_model_exports_and_matches(tmp_path, fmt, expected, absent):
    model = net()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        dense = model(x)
    nnic.quantization_speedup(model, {"0": 8, "2": 8, "4": 8, "6": 8})
    result = nnic.export_onnx(model, x, tmp_path / "q.onnx", int8_format=fmt)
    assert result.kind == "int8" and sorted(result.handled["int8"]) == ["0", "2", "4", "6"]
    assert result.errors["output"] <= nnic.export.TOLERANCES["int8"]
    ops = set(op_types(tmp_path / "q.onnx"))
    assert expected <= ops and not (absent & ops)
    # int8 weights are stored as int8: the file is about a quarter of the float32 weights
    floats = sum(p.numel() for p in net().parameters()) * 4
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * floats
    # and the exported file is as close to the float model as nnic's own int8 model is (activation granularity
    # differs: per tensor in onnxruntime, per token in nnic)
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"input": x.numpy()})[0]
    nnic_err = (model(x) - dense).abs().max().item()
    assert np.abs(got - dense.numpy()).max() < 3 * nnic_err + 1e-3


def weight_types(path) -> set[int]:
    """ONNX element types of the int8 layers' weight codes and zero points (the integer initializers)."""
    integer = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    graph = onnx.load(str(path)).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute]
    return {t.data_type for t in tensors if t.data_type in integer}


@pytest.mark.parametrize("fmt", ["integer", "qdq"])
def test_int8_weights_are_stored_as_uint8_unless_asked_for_int8(tmp_path, fmt):
    """uint8 weights (codes + 128 around zero points + 128) by default: onnxruntime's u8 x s8 kernels without VNNI
    saturate pair sums; the same values stored either way give the same outputs where nothing saturates."""
    model = net()
    x = torch.randn(2, 3, 16, 16)
    nnic.quantization_speedup(model, {"0": 8, "2": 8, "4": 8, "6": 8})
    default = nnic.export_onnx(model, x, tmp_path / "u8.onnx", int8_format=fmt)
    assert weight_types(tmp_path / "u8.onnx") == {onnx.TensorProto.UINT8}
    assert default.errors["output"] <= nnic.export.TOLERANCES["int8"]
    nnic.export_onnx(model, x, tmp_path / "s8.onnx", int8_format=fmt, int8_weights="int8", verify=False)
    assert onnx.TensorProto.INT8 in weight_types(tmp_path / "s8.onnx")
    with pytest.raises(ValueError, match=r"int8_weights: expected one of \('uint8', 'int8'\), got 'u8'"):
        nnic.export_onnx(model, x, tmp_path / "bad.onnx", int8_weights="u8")


def test_static_activations_match_closely(tmp_path):
    model = net()
    batches = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    q = nnic.quantizer("ptq", model, [{"quant_types": ["weight", "input"], "quant_bits": 8,
                                       "op_types": ["Linear", "Conv2d"]}], calibration_data=batches)
    q.compress()
    qmodel = nnic.quantization_speedup(model, q.calibration())
    assert all(m.act == "static" for m in qmodel.modules() if hasattr(m, "act"))
    for fmt in ("integer", "qdq"):
        result = nnic.export_onnx(qmodel, batches[0], tmp_path / f"{fmt}.onnx", int8_format=fmt)
        assert "QuantizeLinear" in op_types(tmp_path / f"{fmt}.onnx")
        assert result.errors["output"] < 1e-2  # same activation codes; only the sums' rounding differs


def linear_stack(k: int = 96) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, 64), nn.ReLU(), nn.Linear(64, 16)).eval()


def int4(model: nn.Module, group_size: int) -> nn.Module:
    from nnic.quantization.modules import Int4Linear

    for name in ("0", "2"):
        setattr(model, name, Int4Linear.from_float(getattr(model, name), group_size=group_size))
    return model


@pytest.mark.parametrize("group_size", [32, 64, 96])
def test_int4_linear_as_matmulnbits(tmp_path, group_size):
    model = int4(linear_stack(), group_size)
    x = torch.randn(5, 96)
    result = nnic.export_onnx(model, x, tmp_path / "q4.onnx")
    assert result.kind == "int4" and result.errors["output"] <= nnic.export.TOLERANCES["int4"]
    m = onnx.load(str(tmp_path / "q4.onnx"))
    assert [n.op_type for n in m.graph.node].count("MatMulNBits") == 2
    assert any(o.domain == "com.microsoft" for o in m.opset_import)


def test_int4_groups_that_do_not_nest_export_dense_with_a_warning(tmp_path, caplog):
    model = int4(linear_stack(), 24)
    with caplog.at_level(logging.WARNING, logger="nnic.export"):
        result = nnic.export_onnx(model, torch.randn(5, 96), tmp_path / "q4.onnx")
    assert "MatMulNBits" not in op_types(tmp_path / "q4.onnx")
    assert "group_size=24" in caplog.text and result.errors["output"] <= nnic.export.TOLERANCES["int4"]


def test_builtin_handlers_are_registered_plugins():
    names = {info.name for info in nnic.list_plugins("onnx_export")}
    assert {"nnic.int8linear", "nnic.int8conv2d", "nnic.int4linear"} <= names


class Doubler(nn.Module):
    """A module type torch knows nothing special about, exported through a handler we pass in."""

    def forward(self, x):
        return torch.fft.irfft(torch.fft.rfft(x), n=x.shape[-1]) * 2


class DoublerExport:
    name = "tests.doubler"
    kind = "float"
    targets = (Doubler,)

    def __init__(self, op: str = "Add", reason: str | None = None) -> None:
        self.op, self.reason = op, reason

    def stand_in(self, module, options):
        if self.reason:
            return self.reason
        return SymbolicStandIn(module, lambda g, x: g.op(self.op, x, x))


def test_a_handler_exports_a_custom_module(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), Doubler())
    with pytest.raises(ExportError, match=r"module '1' \(Doubler\) cannot be exported"):
        nnic.export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx")
    result = nnic.export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx", handlers=[DoublerExport()])
    assert result.handled == {"float": ["1"]} and result.errors["output"] < 1e-5


def test_a_second_handler_for_a_registered_type_is_refused_naming_both(tmp_path):
    class Int8LinearToo(DoublerExport):
        name, targets = "tests.int8linear", (Int8Linear,)

    with pytest.raises(ValueError, match=r"two ONNX export handlers handle Int8Linear: 'nnic\.int8linear' \(from "
                                         r"plugin 'onnx_export' \(distribution nnic .*\)\) and 'tests\.int8linear' "
                                         r"\(passed by the caller\); disable one plugin \(NNIC_DISABLE_PLUGINS=onnx_export\)"):
        nnic.export_onnx(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8), tmp_path / "m.onnx",
                         handlers=[Int8LinearToo()])
    assert not (tmp_path / "m.onnx").exists()


def test_a_handler_that_refuses_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), Doubler())
    with pytest.raises(ExportError, match=r"module '1' \(Doubler\) cannot be exported to ONNX: odd sizes only"):
        nnic.export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx",
                         handlers=[DoublerExport(reason="odd sizes only")])


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), Doubler()

    def forward(self, x):
        return self.a(x), self.b(x)


def test_a_wrong_graph_fails_verification_naming_the_output(tmp_path):
    with pytest.raises(VerificationError, match=r"output 'output_1' diverges"):
        nnic.export_onnx(Pair(), torch.randn(2, 8), tmp_path / "m.onnx", handlers=[DoublerExport(op="Sub")])
    result = nnic.export_onnx(Pair(), torch.randn(2, 8), tmp_path / "m.onnx", handlers=[DoublerExport(op="Sub")],
                              verify=False)
    assert not result.verified and (tmp_path / "m.onnx").exists()
