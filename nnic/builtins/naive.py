"""Naive quantizer: weights only, 2-8 bits, min/max ranges; symmetric per tensor unless asked otherwise."""

from __future__ import annotations

import nnic
from nnic.quantization.base import Quantizer


class NaiveQuantizer(Quantizer):
    """Quantize the weights of the selected layers from their own min/max, with no data and no training.

    Config keys: ``quant_types`` (only ``["weight"]``), ``quant_bits`` (2-8, default use 8), ``quant_dtype``
    (``int``/``uint``), ``quant_scheme`` (``per_tensor_symmetric`` by default, or ``per_tensor_affine``,
    ``per_channel_symmetric``, ``per_channel_affine``; channels are the output channels, dim 0).

    Example::

        q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
        q.compress()
        calibration = q.export_model("qmodel.pt", "calibration.json")
    """

    name = "naive"
    supported_bits = (2, 8)

    def __init__(self, model, config_list) -> None:
        super().__init__(model, config_list)
        for layer, cfg in self.layers.items():
            where = f"config_list[{cfg.entry_index}]"
            if cfg.config["quant_types"] != ["weight"]:
                raise ValueError(
                    f"{where}['quant_types']: the naive quantizer quantizes weights only, got "
                    f"{cfg.config['quant_types']}; use the 'ptq' or 'qat' quantizer for inputs and outputs"
                )


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(NaiveQuantizer)
