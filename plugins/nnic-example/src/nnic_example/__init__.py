"""A template nnic plugin: copy this distribution, rename it, replace the two algorithms with yours.

- ``example_random``: random unstructured pruning with exact counts (the baseline every pruning paper beats).
- ``example_pow2``: weight quantization whose scales are powers of two, so hardware can dequantize with a shift.
"""

from __future__ import annotations

import torch

import nnic
from nnic.masking import parameter, prunable_parameters
from nnic.pruning import Pruner
from nnic.selection import amount
from nnic.quantization import Quantizer
from nnic.quantization.base import WeightFakeQuant
from nnic.quantization.qparams import QuantSpec


class RandomPruner(Pruner):
    """Prune exactly floor(sparsity * n) weights of each selected layer, chosen at random (seeded)."""

    name = "example_random"

    def __init__(self, model, config_list, *, seed: int = 0) -> None:
        super().__init__(model, config_list)
        self.seed = seed

    def calculate_masks(self):
        generator = torch.Generator().manual_seed(self.seed)
        masks = {}
        for layer, cfg in self.layers.items():
            masks[layer] = {}
            for pname in prunable_parameters(cfg.module):
                weight = parameter(cfg.module, pname)
                k = amount(cfg.config["sparsity"], weight.numel())
                keep = torch.ones(weight.numel(), dtype=torch.bool)
                keep[torch.randperm(weight.numel(), generator=generator)[:k]] = False
                masks[layer][pname] = keep.reshape(weight.shape)
        return masks


class PowerOfTwoFakeQuant(WeightFakeQuant):
    """Fake quantization whose scale is rounded up to the next power of two (never clips more)."""

    def qparams(self, weight):
        scale, zero = super().qparams(weight)
        return torch.exp2(torch.ceil(torch.log2(scale))), zero


class PowerOfTwoQuantizer(Quantizer):
    """Symmetric weight quantization with power-of-two scales."""

    name = "example_pow2"
    aliases = ("example_shift",)

    def weight_fake_quant(self, layer: str) -> PowerOfTwoFakeQuant:
        spec = self.weight_spec(layer)
        return PowerOfTwoFakeQuant(QuantSpec(spec.bits, signed=True, symmetric=True, per_channel=spec.per_channel))


@nnic.hookimpl
def register_pruners(register):
    register(RandomPruner)


@nnic.hookimpl
def register_quantizers(register):
    register(PowerOfTwoQuantizer)
