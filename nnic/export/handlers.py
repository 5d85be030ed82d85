"""Export handlers: how a module type nnic (or a plugin) defines is written into an ONNX graph.

torch's exporter knows torch's own modules; nnic's low-bit modules (``Int8Linear``, ``Int4Linear``...) compute
through Rust kernels it cannot trace. ``nnic.export_onnx`` looks every module up, by type, in a table of
handlers registered through the ``register_onnx_exporters`` hook (nnic's own are a built-in plugin,
:mod:`nnic.export.builtin`), and swaps the module for the handler's *stand-in* while torch exports.

A handler is an object with

- ``name``: lower-case, by convention the qualified name of the module type (``"nnic.int8linear"``);
- ``kind``: the export kind its output is verified with (a key of :data:`nnic.export.verify.TOLERANCES`:
  ``"float"``, ``"int8"``, ``"int4"``);
- ``targets``: the module classes it handles (subclasses match; the nearest class in the MRO wins);
- ``stand_in(module, options)``: a module torch can export in ``module``'s place, or a string saying why there
  is none. Return a plain float module (a sparse layer exported dense), or a :class:`SymbolicStandIn` whose
  ``symbolic(g, x)`` writes the ONNX nodes itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnic.type_table import TypeTable

__all__ = ["ExportOptions", "ExportTable", "SymbolicStandIn"]


@dataclass(frozen=True)
class ExportOptions:
    """The caller's choices that handlers honour: the int8 layout (``"integer"``: DynamicQuantizeLinear +
    MatMulInteger/ConvInteger; ``"qdq"``: QuantizeLinear/DequantizeLinear around float MatMul/Conv), the type the
    int8 weight codes are stored as (``"uint8"``: the codes plus 128 around zero points plus 128; ``"int8"``: as
    they are; see ``nnic.export_onnx``), whether 4-bit weights may use onnxruntime's ``com.microsoft``
    ``MatMulNBits``, and the ONNX opset."""

    int8_format: str = "integer"
    int8_weights: str = "uint8"
    int4_matmulnbits: bool = True
    opset: int = 17


# Stand-ins that are being exported right now, by key: the autograd Function gets the key (a plain int, which
# the TorchScript tracer passes through to ``symbolic`` unchanged) instead of the module.
_ACTIVE: dict[int, SymbolicStandIn] = {}
_KEYS = itertools.count()


class _Call(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, key: int) -> torch.Tensor:  # type: ignore[override]
        # The real output, computed with the tracer off: the module's kernels are not traceable (and must not be
        # recorded into the graph); ``symbolic`` stands for them.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return _ACTIVE[key].module(x)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g: Any, x: Any, key: int) -> Any:
        return _ACTIVE[key].symbolic(g, x)


class SymbolicStandIn(nn.Module):
    """Runs ``module`` (so the traced shapes and values are the real ones) and exports as the nodes that
    ``symbolic(g, x)`` adds to the TorchScript ONNX graph ``g`` for the single input ``x``.

    Helpers for ``symbolic``: :meth:`const` (an initializer from a tensor).
    """

    def __init__(self, module: nn.Module, symbolic: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        # Not a registered submodule: the model around it must not see (and torch must not trace) the module
        # whose kernels ONNX cannot express.
        self.__dict__["module"] = module
        self.symbolic = symbolic
        self.key = next(_KEYS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return self.module(x)
        _ACTIVE[self.key] = self
        return _Call.apply(x, self.key)

    def release(self) -> None:
        _ACTIVE.pop(self.key, None)

    @staticmethod
    def const(g: Any, value: torch.Tensor) -> Any:
        return g.op("Constant", value_t=value.detach().cpu().contiguous())


class ExportTable(TypeTable):
    """Export handlers by module class (the ``register_onnx_exporters`` hook's objects); see
    :class:`~nnic.type_table.TypeTable`."""

    kind = "onnx_export"
    noun = "ONNX export handlers"
