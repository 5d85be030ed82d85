"""The lowering of transformers' ``Conv1D`` (GPT-2's attention and MLP projections) for ``nnic.quantization_speedup``.

``Conv1D`` computes ``x @ weight + bias`` with its weight stored ``[in, out]``: a Linear whose weight is the
transpose. It is lowered as that Linear, by the registered Linear lowering (nnic's ``Int8Linear`` for 5-8 bits,
``Int4Linear`` for weight-only 4-bit and group-wise 2-4-bit calibrations), so the codes, the int4 path and any
plugin that overrides the Linear lowering apply to GPT-2 unchanged.

A calibration's weight scales are read in the ``[out, in]`` layout, the one nnic's one-shot LLM quantizers
(``rtn``, ``gptq``, ``awq``: :mod:`nnic.llm.layers`) write for ``Conv1D``: one scale per output feature, or per
output feature and group of inputs. nnic's generic quantizers (``naive``, ``ptq``, ``qat``...) fake-quantize the
stored ``[in, out]`` tensor, so their per-channel scales run along the *inputs*, which no int8 matrix kernel
can apply after the product: such a layer is refused (per-tensor scales are the same in either layout).

``targets`` is found when the table is built, from the already imported ``transformers``: a model holding a
``Conv1D`` has imported it, and quantizing a model without one must not import transformers (seconds).
"""

from __future__ import annotations

import sys

from torch import nn

from nnic.masking import is_parametrized
from nnic.quantization.base import WeightFakeQuant
from nnic.quantization.calibration import LayerCalibration
from nnic.quantization.lowering import LoweringContext, LoweringTable, float_linear

__all__ = ["Conv1DLowering"]


def _fake_quantized_per_input(module: nn.Module) -> bool:
    """Whether a generic quantizer's per-channel fake quantization (channels = the stored weight's axis 0, the
    inputs of a ``Conv1D``) is attached to ``module``'s weight."""
    if not is_parametrized(module, "weight"):
        return False
    return any(isinstance(p, WeightFakeQuant) and p.spec.per_channel for p in module.parametrizations["weight"])


class Conv1DLowering:
    """``transformers.pytorch_utils.Conv1D`` -> the Linear lowering of ``Linear(weight.T, bias)``."""

    name = "transformers.pytorch_utils.conv1d"

    @property
    def targets(self) -> tuple[type[nn.Module], ...]:
        utils = sys.modules.get("transformers.pytorch_utils")
        conv1d = getattr(utils, "Conv1D", None)
        return (conv1d,) if isinstance(conv1d, type) else ()

    def lower(self, module: nn.Module, layer: LayerCalibration, context: LoweringContext) -> nn.Module | str:
        if _fake_quantized_per_input(module):
            return ("its per-channel weight scales (a generic quantizer's, along the stored [in, out] weight's "
                    "axis 0) run along the inputs, which no int8 kernel applies; quantize Conv1D per tensor, or "
                    "with a one-shot quantizer (rtn, gptq, awq), whose scales run along the outputs")
        linear = float_linear(module.weight.detach().t(), module.bias)  # the effective weight: masks applied
        lowering = LoweringTable.from_registry().find(linear)
        if lowering is None:
            return "Conv1D is lowered as a Linear, and no Linear lowering is registered"
        return lowering.lower(linear, layer, context)
