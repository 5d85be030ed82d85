"""``nnic.export_onnx``: a pruned, sped-up or quantized model as an ONNX file, checked in onnxruntime.

The graph comes from torch's TorchScript-based exporter (``dynamo=False``): it lets nnic write the ONNX nodes of
its own modules through ``autograd.Function.symbolic`` (:mod:`nnic.export.handlers`), exports the models nnic
speeds up (torchvision, Hugging Face BERT / GPT-2) in about a second, and marks batch and sequence axes dynamic
from names; the torch.export-based exporter has no path for modules that call native kernels, and takes minutes
on the same models. Custom modules are swapped for their handlers' stand-ins during the export only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnic.export.files import staged_onnx
from nnic.export.handlers import ExportOptions, ExportTable, SymbolicStandIn
from nnic.export.io import Flat, Inputs, flatten_outputs
from nnic.export.locate import failing_module
from nnic.export.verify import TOLERANCES, VerificationError, compare, run_onnxruntime
from nnic.selection import replace_module

__all__ = ["ExportError", "ExportResult", "export_onnx"]

INT8_FORMATS = ("integer", "qdq")
INT8_WEIGHTS = ("uint8", "int8")


class ExportError(ValueError):
    """The model (a module named in the message) cannot be written as ONNX."""


@dataclass
class ExportResult:
    """What was written: the file, the opset, the export kind (the tolerance verification used), the graph's
    input and output names, the modules each handler exported, and the verification errors by output
    (relative to each output's peak; empty when not verified)."""

    path: str
    opset: int
    kind: str
    input_names: list[str]
    output_names: list[str]
    handled: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return bool(self.errors)


def _onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"nnic.export_onnx needs {module}: pip install 'nnic[onnx]'")


@contextlib.contextmanager
def _stand_ins(model: nn.Module, table: ExportTable, options: ExportOptions) -> Iterator[dict[str, list[str]]]:
    """Swaps every module a handler knows for its stand-in (not descending into handled modules), restoring the
    originals afterwards; yields ``{handler kind: [module names]}``."""
    swapped: list[tuple[str, nn.Module, nn.Module]] = []
    handled: dict[str, list[str]] = {}
    skip: list[str] = []
    try:
        for name, module in list(model.named_modules()):
            if not name or any(name.startswith(prefix + ".") for prefix in skip):
                continue
            handler = table.find(module)
            if handler is None:
                continue
            skip.append(name)
            new = handler.stand_in(module, options)
            if isinstance(new, str):
                raise ExportError(f"module {name!r} ({type(module).__name__}) cannot be exported to ONNX: {new}")
            replace_module(model, name, new)
            swapped.append((name, module, new))
            handled.setdefault(handler.kind, []).append(name)
        yield handled
    finally:
        for name, module, new in reversed(swapped):
            replace_module(model, name, module)
            if isinstance(new, SymbolicStandIn):
                new.release()


def _export_kind(handled: dict[str, list[str]]) -> str:
    kinds = [k for k in handled if k in TOLERANCES] or ["float"]
    return max(kinds, key=TOLERANCES.__getitem__)


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    """``nn.MultiheadAttention``'s inference fast path (a fused native op the exporter has no ONNX form for: ViT,
    ``nn.TransformerEncoderLayer``) switched as given, restored afterwards; the slow path computes the same."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _write(flat: Flat, inputs: Inputs, path: str, *, opset: int, output_names: list[str],
           dynamic_axes: dict[str, dict[int, str]] | None) -> None:
    """torch.onnx.export into a staging folder beside ``path``, published there once complete (weights past
    2 GB in one ``<path>.data`` file: see :mod:`nnic.export.files`)."""
    with staged_onnx(path) as staged, warnings.catch_warnings(), torch.no_grad(), _mha_fastpath(False):
        # The TorchScript exporter warns that it is deprecated, and the tracer about Python values in models
        # it records as constants; verification checks what was recorded.
        warnings.simplefilter("ignore")
        torch.onnx.export(flat, tuple(inputs.tensors), staged, dynamo=False, opset_version=opset,
                          input_names=inputs.names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)


def export_onnx(model: nn.Module, example_input: Any, path: str | os.PathLike, *, verify: bool | None = None,
                opset: int = 17, int8_format: str = "integer", int8_weights: str = "uint8",
                int4_matmulnbits: bool = True,
                dynamic_axes: dict[str, dict[int, str]] | bool = True, output_names: list[str] | None = None,
                tolerance: float | None = None, handlers: list[Any] | tuple[Any, ...] = ()) -> ExportResult:
    """Writes ``model`` (float, pruned/sped-up, or quantized by ``nnic.quantization_speedup``) as ONNX to ``path``.

    :param example_input: a tensor, tuple of tensors, or dict of tensors (keyword arguments); traced once and,
        when verifying, run in onnxruntime.
    :param verify: run the file in onnxruntime on ``example_input`` (and on twice its batch when the batch axis
        is dynamic) and compare with the model; raises :class:`~nnic.export.verify.VerificationError` naming the
        first diverging output. Default: when onnxruntime is installed.
    :param opset: ONNX opset of the default domain (17; ``MatMulNBits`` is in ``com.microsoft`` version 1).
    :param int8_format: ``"integer"`` (MatMulInteger / ConvInteger, dynamic activations: fastest in onnxruntime)
        or ``"qdq"`` (QuantizeLinear / DequantizeLinear around float MatMul / Conv).
    :param int8_weights: how int8 weight codes are stored. ``"uint8"`` (default): the codes plus 128, around zero
        points plus 128 (the same values), which onnxruntime multiplies exactly on every x86 CPU. ``"int8"``: as
        they are; onnxruntime runs u8 x s8 faster where the CPU has VNNI, but its AVX2 and AVX-512 kernels without
        VNNI (``vpmaddubsw``) saturate the sum of two products (255 x 127 twice), so outputs go wrong there
        (measured on a Zen 3 machine: 0.149 of the output's peak on a small CNN; verification reports it).
    :param int4_matmulnbits: ``Int4Linear`` as ``com.microsoft.MatMulNBits`` (else a dequantized float weight).
    :param dynamic_axes: ``True``: batch (axis 0 of every input) and sequence (axis 1 of 2-D integer and 3-D float
        inputs) dynamic; ``False``: static shapes; a dict: torch's ``dynamic_axes`` as given.
    :param tolerance: overrides the export kind's verification tolerance (see :mod:`nnic.export.verify`).
    :param handlers: extra export handlers, besides the registered ones (see :mod:`nnic.export.handlers`).
    """
    _require("onnx")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if int8_format not in INT8_FORMATS:
        raise ValueError(f"int8_format: expected one of {INT8_FORMATS}, got {int8_format!r}")
    if int8_weights not in INT8_WEIGHTS:
        raise ValueError(f"int8_weights: expected one of {INT8_WEIGHTS}, got {int8_weights!r}")
    if not isinstance(opset, int) or not 13 <= opset <= 20:
        raise ValueError(f"opset: expected an int in [13, 20] (per-channel QuantizeLinear needs 13), got {opset!r}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance: expected a positive number, got {tolerance!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if verify is None:
        verify = _onnxruntime_installed()
    elif verify:
        _require("onnxruntime")
    inputs = Inputs(example_input)
    options = ExportOptions(int8_format=int8_format, int8_weights=int8_weights, int4_matmulnbits=int4_matmulnbits,
                            opset=opset)
    table = ExportTable.from_registry(handlers)

    modes = [(m, m.training) for m in model.modules()]  # restored one by one: train(True) would recurse
    model.eval()
    try:
        with torch.no_grad():
            pairs = flatten_outputs(inputs.call(model, inputs.tensors))
        outputs = tuple(t for _, t in pairs)
        names = list(output_names) if output_names is not None else [name for name, _ in pairs]
        if len(names) != len(outputs):
            raise ValueError(f"output_names: the model has {len(outputs)} outputs, got {len(names)} names")
        if dynamic_axes is True:
            axes: dict[str, dict[int, str]] | None = inputs.dynamic_axes()
            axes.update({name: {0: "batch"} for name, t in zip(names, outputs) if t.dim()})
        elif dynamic_axes is False:
            axes = None
        elif isinstance(dynamic_axes, dict):
            axes = dynamic_axes
        else:
            raise TypeError(f"dynamic_axes: expected a bool or a dict, got {type(dynamic_axes).__name__}")
        with _stand_ins(model, table, options) as handled:
            flat = Flat(model, inputs)
            try:
                _write(flat, inputs, path, opset=opset, output_names=names, dynamic_axes=axes)
            except ExportError:
                raise
            except Exception as err:
                raise _located(flat, inputs, opset, err) from err
        result = ExportResult(path, opset, _export_kind(handled), inputs.names, names, handled)
        if verify:
            result.errors = _verify(model, inputs, result, outputs, tolerance, dynamic_batch=dynamic_axes is True)
    finally:
        for module, training in modes:
            module.training = training
    return result


def _brief(err: Exception) -> str:
    """The first line of an exporter error (some print whole tensors after it)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:400] if text else ''}"


def _located(flat: Flat, inputs: Inputs, opset: int, err: Exception) -> ExportError:
    found = failing_module(flat.model, lambda: flat(*inputs.tensors), opset)
    if found is None:
        return ExportError(f"torch's ONNX exporter failed on the model's own forward: {_brief(err)}")
    name, module, inner = found
    return ExportError(f"module {name!r} ({type(module).__name__}) cannot be exported to ONNX: {_brief(inner)}; "
                       f"register an export handler for {type(module).__qualname__} (see nnic.export.handlers)")


def _verify(model: nn.Module, inputs: Inputs, result: ExportResult, outputs: tuple[torch.Tensor, ...],
            tolerance: float | None, *, dynamic_batch: bool) -> dict[str, float]:
    try:
        got = run_onnxruntime(result.path, inputs.names, inputs.tensors)
    except Exception as err:
        raise VerificationError(f"onnxruntime cannot run {result.path}: {err}") from err
    errors = compare(got, outputs, result.output_names, result.kind, tolerance)
    doubled = inputs.doubled_batch() if dynamic_batch else None
    if doubled is not None:
        try:
            with torch.no_grad():
                expected = Flat(model, inputs)(*doubled)
        except Exception:  # the model itself does not take a larger batch along axis 0: nothing to check
            return errors
        got = run_onnxruntime(result.path, inputs.names, doubled)
        compare(got, expected, result.output_names, result.kind, tolerance, where="at twice the batch: ")
    return errors
