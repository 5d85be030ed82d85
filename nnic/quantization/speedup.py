"""``quantization_speedup(model, calibration)``: replace quantized layers by modules that compute in low bits.

For each layer named in the calibration, by its weight bits:

- 2-8 bits (except 4 on a Linear): :class:`~nnic.quantization.modules.Int8Linear` /
  :class:`~nnic.quantization.modules.Int8Conv2d`. With a quantizer's calibration (scale/zero point), the
  integer codes are exactly the quantizer's: ``q = clamp(round_half_even(w / scale) + zero_point)`` of the
  layer's effective weight (parametrizations such as pruning masks included); ``uint`` codes are shifted
  by -128 (with their zero points), which leaves the products unchanged.
- 4 bits on a Linear: :class:`~nnic.quantization.modules.Int4Linear`, when the centred codes fit in
  [-8, 7] (symmetric schemes); affine 4-bit codes run on the int8 GEMM instead.
- 16 / 32 bits, and layers not named: stay float.

A plain per-layer bits dict (``{"fc1": 8, "fc2": 4}``) quantizes weights directly (symmetric, per output
channel; per group of 32 inputs for int4) and activations dynamically (per token).
Static activation quantization is used when a calibration entry has ``input_bits == 8`` with
``tracked_min_input`` / ``tracked_max_input``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from nnic.quantization.modules import Int4Linear, Int8Conv2d, Int8Linear

logger = logging.getLogger("nnic.quantization")

_FLOAT_BITS = (16, 32)


def _entry(name: str, raw: Any) -> dict[str, Any]:
    if isinstance(raw, bool) or not isinstance(raw, (int, dict)):
        raise TypeError(f"calibration[{name!r}]: expected an int (bits) or a dict, got {type(raw).__name__}")
    entry = {"weight_bits": raw} if isinstance(raw, int) else dict(raw)
    bits = entry.get("weight_bits")
    if not isinstance(bits, int) or not (2 <= bits <= 8 or bits in _FLOAT_BITS):
        raise ValueError(f"calibration[{name!r}]['weight_bits']: expected 2-8, 16 or 32, got {bits!r}")
    return entry


def _codes(name: str, w: torch.Tensor, entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int codes (int64, shape of w), scales and zero points (1 or per channel) from a calibration entry."""
    bits = entry["weight_bits"]
    signed = entry.get("weight_dtype", "int") == "int"
    scheme = entry.get("weight_scheme", "per_tensor_symmetric")
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    scale = torch.as_tensor(entry["weight_scale"], dtype=torch.float32).reshape(-1)
    zero = torch.as_tensor(entry.get("weight_zero_point", 0), dtype=torch.int64).reshape(-1)
    w = w.detach().float().cpu()
    _check_qparams(name, scale, zero, w.shape[0] if scheme.startswith("per_channel") else 1, scheme, tuple(w.shape))
    if scheme.startswith("per_channel"):
        axis = entry.get("weight_axis", 0)
        if axis != 0:
            raise ValueError(f"per-channel weights must be quantized along axis 0 (output channels), got {axis}")
        shape = (-1,) + (1,) * (w.dim() - 1)
        s, z = scale.reshape(shape), zero.reshape(shape)
    else:
        s, z = scale, zero
    q = torch.clamp(torch.round(w / s) + z, qmin, qmax).to(torch.int64)
    if not signed:  # uint codes: shift codes and zero points by 2^(bits-1) into the signed range
        shift = 1 << (bits - 1)
        q, zero = q - shift, zero - shift
    return q, scale, zero


def _check_qparams(name: str, scale: torch.Tensor, zero: torch.Tensor, channels: int, scheme: str,
                   shape: tuple[int, ...]) -> None:
    """A calibration's scales must be positive and finite, one per channel (or one), or the codes come out wrong."""
    where = f"calibration[{name!r}]"
    if scale.numel() != channels:
        raise ValueError(f"{where}['weight_scale']: expected {channels} scale(s) for {scheme} on a weight of shape "
                         f"{shape}, got {scale.numel()}")
    if zero.numel() not in (1, channels):
        raise ValueError(f"{where}['weight_zero_point']: expected 1 or {channels} zero point(s), got {zero.numel()}")
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"{where}['weight_scale']: expected positive finite scales, got {scale.tolist()[:8]}")


def _static_act(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("input_bits") != 8 or "tracked_min_input" not in entry or "tracked_max_input" not in entry:
        return {}
    lo, hi = min(float(entry["tracked_min_input"]), 0.0), max(float(entry["tracked_max_input"]), 0.0)
    s = (hi - lo) / 255 or 1.0
    z = int(min(max(-round(lo / s), 0), 255))
    return {"act": "static", "act_scale": s, "act_zero_point": z}


def _unsupported(name: str, why: str, on_unsupported: str) -> None:
    msg = f"quantization_speedup: layer {name!r} stays float: {why}"
    if on_unsupported == "error":
        raise ValueError(msg + " (pass on_unsupported='warn' to keep it float)")
    logger.warning(msg)


def _replacement(name: str, mod: nn.Module, entry: dict[str, Any], act_kw: dict[str, Any]) -> nn.Module | str:
    """The low-bit module for ``mod``, or why there is none."""
    bits = entry["weight_bits"]
    is_linear = isinstance(mod, nn.Linear)
    if is_linear:
        cls: Any = Int8Linear
    elif isinstance(mod, nn.Conv2d):
        why = Int8Conv2d.supports(mod)
        if why:
            return why
        cls = Int8Conv2d
    else:
        return f"{type(mod).__name__} has no low-bit implementation (Linear and Conv2d do)"
    w = mod.weight  # the effective weight: parametrizations (masks, fake quantization) applied
    kw = {**act_kw, **_static_act(entry)}
    if "weight_scale" not in entry:  # plain bits: quantize directly
        if bits == 4 and is_linear:
            return Int4Linear.from_float(mod, weight=w, group_size=32)
        if bits == 8:
            return cls.from_float(mod, weight=w, **kw)
        # 2-7 bits without calibration: symmetric per-channel codes of that width, run on the int8 GEMM.
        half = (1 << (bits - 1)) - 1
        w2 = w.detach().float().reshape(w.shape[0], -1)
        s = torch.where(w2.abs().amax(1) > 0, w2.abs().amax(1) / half, torch.ones(w.shape[0]))
        q = torch.clamp(torch.round(w2 / s[:, None]), -half, half).to(torch.int8).reshape(w.shape)
        return cls.from_float(mod, weight=w, weight_q=q, weight_scale=s, **kw)
    q, scale, zero = _codes(name, w, entry)
    centred = q - (zero.reshape((-1,) + (1,) * (q.dim() - 1)) if zero.numel() > 1 else zero)
    if bits == 4 and is_linear and int(centred.min()) >= -8 and int(centred.max()) <= 7 and "input_bits" not in entry:
        k = q.shape[1]
        gs = -(-k // 8) * 8  # one group spanning K: the calibration has one scale per channel (or tensor)
        scales = scale.expand(q.shape[0]).reshape(-1, 1).contiguous()
        return Int4Linear.from_float(mod, weight=w, group_size=gs, weight_q=centred.to(torch.int8), weight_scales=scales)
    if int(q.min()) < -128 or int(q.max()) > 127 or int(zero.min()) < -128 or int(zero.max()) > 127:
        return "weight codes do not fit int8"
    return cls.from_float(mod, weight=w, weight_q=q.to(torch.int8), weight_scale=scale, weight_zero_point=zero, **kw)


def quantization_speedup(
    model: nn.Module,
    calibration: dict[str, Any],
    *,
    on_unsupported: str = "error",
    act: str = "per_token",
    symmetric: bool = False,
) -> nn.Module:
    """Replaces every layer named in ``calibration`` by its real low-bit module; returns ``model`` (changed in
    place). See the module docstring for the rules.

    :param calibration: a quantizer's ``calibration()`` (``{layer: {"weight_bits": ..., "weight_scale": ...}}``)
        or a plain ``{layer: bits}`` dict.
    :param on_unsupported: ``"error"`` (default) raises ``ValueError`` for a layer that has no low-bit module;
        ``"warn"`` logs a warning (logger ``nnic.quantization``) and keeps it float.
    :param act: dynamic activation quantization, ``"per_token"`` or ``"per_tensor"`` (static when calibrated).
    :param symmetric: symmetric dynamic activation quantization.
    """
    if on_unsupported not in ("error", "warn"):
        raise ValueError(f"on_unsupported must be 'error' or 'warn', got {on_unsupported!r}")
    if act not in ("per_token", "per_tensor"):
        raise ValueError(f"act must be 'per_token' or 'per_tensor', got {act!r}")
    if not isinstance(calibration, dict):
        raise TypeError(f"calibration must be a dict, got {type(calibration).__name__}")
    modules = dict(model.named_modules())
    entries = {name: _entry(name, raw) for name, raw in calibration.items()}
    for name in entries:
        if name not in modules or name == "":
            raise KeyError(f"calibration names layer {name!r}, which the model does not have")
    # Build every replacement before swapping any, so a bad entry leaves the model as it was.
    replacements: dict[str, nn.Module] = {}
    for name, entry in entries.items():
        if entry["weight_bits"] in _FLOAT_BITS:
            continue
        mod = modules[name]
        with torch.no_grad():
            new = _replacement(name, mod, entry, {"act": act, "symmetric": symmetric})
        if isinstance(new, str):
            _unsupported(name, new, on_unsupported)
            continue
        replacements[name] = new.train(mod.training)
    for name, new in replacements.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, new)
    return model


__all__ = ["quantization_speedup"]
