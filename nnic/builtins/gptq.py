"""GPTQ: one-shot weight quantization with second-order error compensation.

Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers".
Group-wise (``group_size``), optionally in act-order (columns by decreasing Hessian diagonal, with static group
ranges so that the layout stays the plain group-wise one), with dampening, and true-sequential: inside a
block, layers reading one tensor (q, k, v) are quantized together, and later layers observe inputs produced
by the already-quantized ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import nnic
from nnic.config import Key, bool_key, float_key, int_key
from nnic.llm import layers as L
from nnic.llm.groupquant import GroupQuant
from nnic.llm.hessian import Hessian
from nnic.llm.obs import gptq_quantize
from nnic.llm.oneshot import OneShotQuantizer

__all__ = ["GPTQQuantizer"]


class GPTQQuantizer(OneShotQuantizer):
    """GPTQ, group-wise, 2-8 bits.

    Config keys: those of :class:`~nnic.llm.oneshot.OneShotQuantizer`, plus ``act_order`` (default True) and
    ``damp`` (fraction of the mean Hessian diagonal added to it, default 0.01).

    :param true_sequential: quantize the layers of a block in the order they run, each stage observing the
        outputs of the stages before it (default True); False observes the whole block once.

    Example::

        q = nnic.quantizer("gptq", model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 128,
                                            "op_types": ["Linear"]}, {"exclude": True, "op_names": ["lm_head"]}],
                           calibration_data=batches)
        q.compress()
    """

    name = "gptq"
    config_keys: tuple[Key, ...] = (*OneShotQuantizer.config_keys, bool_key("act_order", default=True),
                                    float_key("damp", 0, 1, default=0.01), int_key("block_size", lo=1, default=128))

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None, true_sequential: bool = True) -> None:
        self.true_sequential = bool(true_sequential)
        super().__init__(model, config_list, calibration_data=calibration_data, blocks=blocks,
                         calibration_steps=calibration_steps, progress=progress)

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self._stats.setdefault(name, Hessian(x.shape[1])).add(x)

    def quantize_group(self, names: list[str], modules: list[nn.Module]) -> None:
        for name, module in zip(names, modules):
            c = self.layers[name].config
            h = self._stats.pop(name).get()
            grid = self.grid(name)
            w, scale, zero = gptq_quantize(L.weight_matrix(module).to(h.device), h, grid, act_order=c["act_order"],
                                           damp=c["damp"], block_size=c["block_size"])
            L.set_weight_matrix(module, w)
            self.state[name] = GroupQuant(grid, scale.cpu(), zero.cpu())


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(GPTQQuantizer)
