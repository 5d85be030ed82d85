"""Input and output fake quantization, attached to a layer through forward (pre-)hooks.

:class:`ActivationFakeQuant` is a module registered as a child of the quantized layer (``<layer>.input_quant``
/ ``<layer>.output_quant``), so its learnable parameters (LSQ step sizes) are in ``model.parameters()`` and
its statistics in the state dict; :func:`attach` registers the hook that routes the layer's first input (or
its output) through it. ``Quantizer.export_model`` leaves these entries out of the exported weights.

States: *observing* (statistics are collected, in training mode or during calibration) and *quantizing* (the
tensor is replaced by its fake-quantized value, gradient straight through). Before ``quant_start_step`` a QAT
layer observes only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnic.quantization.observers import Observer
from nnic.quantization.qparams import QuantSpec, fake_quantize

__all__ = ["CHILD_NAMES", "ActivationFakeQuant", "attach", "detach"]

CHILD_NAMES = {"input": "input_quant", "output": "output_quant"}


class ActivationFakeQuant(nn.Module):
    """Observe, then fake-quantize, one activation tensor of a layer.

    :param observer: collects the range (see :mod:`nnic.quantization.observers`).
    :param observe_in_eval: also observe in eval mode (post-training calibration); QAT observes while training.
    """

    def __init__(self, spec: QuantSpec, observer: Observer, *, observe_in_eval: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.observer = observer
        self.observe_in_eval = observe_in_eval
        self.observing = True
        self.quantizing = False
        self.register_buffer("frozen_scale", torch.tensor([]))
        self.register_buffer("frozen_zero_point", torch.tensor([], dtype=torch.int32))

    def freeze(self) -> None:
        """Fix the scale and zero point at the observer's current choice and stop observing."""
        scale, zero = self.observer.qparams()
        self.frozen_scale, self.frozen_zero_point = scale, zero
        self.observing = False

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen_scale.numel():
            return self.frozen_scale, self.frozen_zero_point
        return self.observer.qparams()

    def tracked_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.observer.range()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if self.observing and (self.training or self.observe_in_eval):
            self.observer(x)
        if self.quantizing and (self.frozen_scale.numel() or self.observer.observed):
            return fake_quantize(x, *self.qparams(), self._spec_for(x))
        return x

    def _spec_for(self, x: torch.Tensor) -> QuantSpec:
        if not self.spec.per_channel or self.spec.axis < x.dim():
            return self.spec
        raise ValueError(f"per-channel axis {self.spec.axis} does not exist in a tensor of shape {tuple(x.shape)}")


def _input_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if not args:
        return None
    return (module.input_quant(args[0]), *args[1:])


def _output_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return module.output_quant(output)


def attach(module: nn.Module, quant_type: str, fq: nn.Module) -> None:
    """Route ``module``'s first input (``quant_type="input"``) or its output through ``fq``."""
    if quant_type not in CHILD_NAMES:
        raise ValueError(f"quant_type: expected 'input' or 'output', got {quant_type!r}")
    child = CHILD_NAMES[quant_type]
    if hasattr(module, child):
        detach(module, quant_type)
    module.add_module(child, fq)
    if quant_type == "input":
        handle = module.register_forward_pre_hook(_input_hook)
    else:
        handle = module.register_forward_hook(_output_hook)
    fq._nnic_hook_handle = handle


def detach(module: nn.Module, quant_type: str) -> None:
    """Remove what :func:`attach` added."""
    child = CHILD_NAMES[quant_type]
    fq = getattr(module, child, None)
    if fq is None:
        return
    handle = getattr(fq, "_nnic_hook_handle", None)
    if handle is not None:
        handle.remove()
    delattr(module, child)


def find(module: nn.Module, quant_type: str) -> nn.Module | None:
    """The fake-quant module attached to ``module`` for ``quant_type``, if any."""
    return getattr(module, CHILD_NAMES[quant_type], None)
