"""``quantization_speedup(model, calibration)``: replace quantized layers by modules that compute in low bits.

Each layer named in the calibration is looked up, by module type, in the lowering table that plugins fill
through the ``register_lowerings`` hook (:mod:`nnic.quantization.lowering`); nnic's own lowerings
(``nnic/builtins/lowerings.py``) turn ``Linear`` into ``Int8Linear`` / ``Int4Linear`` and ``Conv2d`` into
``Int8Conv2d``. By weight bits:

- 2-8 bits: the module's low-bit twin. With a quantizer's calibration (scale/zero point) the integer codes are
  exactly the quantizer's: ``q = clamp(round_half_even(w / scale) + zero_point)`` of the layer's effective
  weight (parametrizations such as pruning masks included).
- 16 / 32 bits, and layers not named: stay float.

A plain per-layer bits dict (``{"fc1": 8, "fc2": 4}``) quantizes weights directly (symmetric, per output
channel; per group of 32 inputs for int4) and activations dynamically (per token). Static activation
quantization is used when a calibration entry has ``input_bits == 8`` with ``tracked_min_input`` /
``tracked_max_input``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from nnic.kernels import DEFAULT_INT4_SCALE_DTYPE, check_int4_scale_dtype
from nnic.quantization.calibration import Calibration
from nnic.quantization.lowering import LoweringContext, LoweringTable
from nnic.selection import replace_module

logger = logging.getLogger("nnic.quantization")

_FLOAT_BITS = (16, 32)


def _unsupported(name: str, why: str, on_unsupported: str) -> None:
    msg = f"quantization_speedup: layer {name!r} stays float: {why}"
    if on_unsupported == "error":
        raise ValueError(msg + " (pass on_unsupported='warn' to keep it float)")
    logger.warning(msg)


def _lowerable(calibration: Calibration, modules: dict[str, nn.Module]) -> list[str]:
    """The layers to lower (not float), after checking that each names a module and has weight bits."""
    names = []
    for name, layer in calibration.items():
        if name not in modules:
            raise KeyError(f"calibration names layer {name!r}, which the model does not have")
        bits = None if layer.weight is None else layer.weight.bits
        if bits is None or not (1 <= bits <= 8 or bits in _FLOAT_BITS):
            raise ValueError(f"calibration[{name!r}]['weight_bits']: expected 2-8, 16 or 32, got {bits!r}")
        if bits not in _FLOAT_BITS:
            names.append(name)
    return names


def quantization_speedup(
    model: nn.Module,
    calibration: dict[str, Any] | Calibration,
    *,
    on_unsupported: str = "error",
    act: str = "per_token",
    symmetric: bool = False,
    int4_scale_dtype: torch.dtype = DEFAULT_INT4_SCALE_DTYPE,
    reduce_range: bool = False,
) -> nn.Module:
    """Replaces every layer named in ``calibration`` by its real low-bit module; returns ``model`` (changed in
    place). See the module docstring for the rules.

    :param calibration: a quantizer's ``calibration()`` (``{layer: {"weight_bits": ..., "weight_scale": ...}}``),
        a :class:`~nnic.quantization.calibration.Calibration`, or a plain ``{layer: bits}`` dict. Every entry is
        checked by layer and key before any module changes.
    :param on_unsupported: ``"error"`` (default) raises ``ValueError`` for a layer that has no low-bit module;
        ``"warn"`` logs a warning (logger ``nnic.quantization``) and keeps it float.
    :param act: dynamic activation quantization, ``"per_token"`` or ``"per_tensor"`` (static when calibrated).
    :param symmetric: symmetric dynamic activation quantization.
    :param reduce_range: 7-bit dynamic activation codes for the int8 layers (as ``torch.ao``'s x86 default): on a
        CPU without AVX512-VNNI their GEMM takes one operation fewer per multiply (1.1-1.4x faster there); the same
        results on every CPU. Layers with calibrated (static) inputs keep 8 bits.
    :param int4_scale_dtype: the dtype ``Int4Linear`` stores its group scales in: ``torch.uint8`` (default: 8-bit
        codes times a float32 step per output, 0.53 bytes per weight at groups of 32, the fewest a decode step
        reads; each scale rounded up and the calibration's codes re-rounded to it), ``torch.float16`` (as
        GGUF/GPTQ/AWQ: 0.5625 bytes per weight, each scale rounded once) or ``torch.float32`` (the calibration's
        scales exactly, 0.625).
    """
    if on_unsupported not in ("error", "warn"):
        raise ValueError(f"on_unsupported must be 'error' or 'warn', got {on_unsupported!r}")
    if act not in ("per_token", "per_tensor"):
        raise ValueError(f"act must be 'per_token' or 'per_tensor', got {act!r}")
    check_int4_scale_dtype(int4_scale_dtype, "int4_scale_dtype")
    calibration = Calibration.from_dict(calibration)
    modules = {name: mod for name, mod in model.named_modules() if name}
    names = _lowerable(calibration, modules)
    table = LoweringTable.from_registry() if names else None
    # Build every replacement before swapping any, so a bad entry leaves the model as it was.
    replacements: dict[str, nn.Module] = {}
    for name in names:
        assert table is not None
        mod, layer = modules[name], calibration[name]
        lowering = table.find(mod)
        if layer.weight is not None and layer.weight.dtype == "binary":
            new: nn.Module | str = "binary (±1) weights have no low-bit module"
        elif lowering is None:
            new = f"{type(mod).__name__} has no lowering (registered: {', '.join(table.known())})"
        else:
            with torch.no_grad():
                new = lowering.lower(mod, layer, LoweringContext(name, act, symmetric, int4_scale_dtype, reduce_range))
        if isinstance(new, str):
            _unsupported(name, new, on_unsupported)
            continue
        replacements[name] = new.train(mod.training)
    for name, new in replacements.items():
        replace_module(model, name, new)
    return model


__all__ = ["quantization_speedup"]
