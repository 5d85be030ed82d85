"""ONNX export of nnic's models, verified in onnxruntime: ``nnic.export_onnx(model, example_input, path)``.

Needs the ``onnx`` extra (``pip install 'nnic[onnx]'``: onnx, onnxruntime); imported only when used.
"""

from nnic.export.api import ExportError, ExportResult, export_onnx
from nnic.export.handlers import ExportOptions, ExportTable, SymbolicStandIn
from nnic.export.verify import TOLERANCES, VerificationError

__all__ = ["TOLERANCES", "ExportError", "ExportOptions", "ExportResult", "ExportTable", "SymbolicStandIn",
           "VerificationError", "export_onnx"]
