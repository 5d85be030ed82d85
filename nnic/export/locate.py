"""Finding the module that torch's ONNX exporter fails on, so the error can name it.

torch reports the op it could not convert (``aten::fft_rfft``), not where it is. After a failed export the
model runs once more with forward hooks that record each module's positional tensor inputs, in the order the
modules *finish* (children before their parent); each module is then exported alone on its recorded inputs, and
the first that fails is the innermost module containing the failing op.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn


def record_calls(model: nn.Module, run: Any) -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    """``(name, module, args)`` for each module call whose arguments are all tensors, in finishing order."""
    calls: list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]] = []
    seen: set[int] = set()

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if id(module) in seen or kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
                return
            seen.add(id(module))
            calls.append((name, module, tuple(a.detach() for a in args)))
        return record

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            run()
    except Exception:  # the run only gathers evidence; the caller already has the real error
        pass
    finally:
        for h in handles:
            h.remove()
    return calls


def failing_module(model: nn.Module, run: Any, opset: int) -> tuple[str, nn.Module, Exception] | None:
    """The innermost module (name, module, error) that cannot be exported on its own, or None."""
    for name, module, args in record_calls(model, run):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, io.BytesIO(), opset_version=opset, dynamo=False)
        except Exception as err:  # noqa: BLE001 - any exporter failure is the evidence we look for
            return name, module, err
    return None
