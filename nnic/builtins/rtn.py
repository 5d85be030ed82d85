"""RTN: group-wise round-to-nearest weight quantization, the data-free baseline of GPTQ and AWQ.

Each row's weights are split into groups of ``group_size`` consecutive inputs; each group gets its own scale
(and zero point, affine) from its min/max and every weight is rounded to the nearest level.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import nnic
from nnic.llm import layers as L
from nnic.llm.groupquant import GroupQuant
from nnic.llm.oneshot import OneShotQuantizer

__all__ = ["RTNQuantizer"]


class RTNQuantizer(OneShotQuantizer):
    """Round-to-nearest, group-wise, symmetric or affine, 2-8 bits; needs no data.

    Config keys: see :class:`~nnic.llm.oneshot.OneShotQuantizer` (``quant_bits``, ``quant_scheme``,
    ``group_size``). Any Linear or Conv1D layer may be selected (no transformer blocks needed). With
    ``calibration_data`` the layers are quantized block by block as the other one-shot quantizers do, which
    adds the per-layer output errors to :meth:`report`.

    Example::

        q = nnic.quantizer("rtn", model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 128,
                                           "quant_scheme": "per_channel_affine", "op_types": ["Linear"]}])
        q.compress()
    """

    name = "rtn"
    needs_data = False

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None) -> None:
        super().__init__(model, config_list, calibration_data=calibration_data, blocks=blocks,
                         calibration_steps=calibration_steps, progress=progress)
        self.with_data = calibration_data is not None

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        pass  # RTN looks at the weights only

    def quantize_group(self, names: list[str], modules: list[nn.Module]) -> None:
        for name, module in zip(names, modules):
            grid = self.grid(name)
            w = L.weight_matrix(module)
            scale, zero = grid.all_params(w)
            L.set_weight_matrix(module, grid.fake(w, grid.expand(scale, w.shape[1]), grid.expand(zero, w.shape[1])))
            self.state[name] = GroupQuant(grid, scale, zero)

    def _run(self) -> None:
        if self.with_data:
            super()._run()
            return
        names = list(self.layers)
        self.quantize_group(names, [self.layers[n].module for n in names])


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(RTNQuantizer)
