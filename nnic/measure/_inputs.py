"""How an example input is passed to a model, shared by every measurement."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def call(model: nn.Module, example_input: Any) -> Any:
    """Run ``model`` on ``example_input``: a tensor is the single positional argument, a tuple or list the
    positional arguments, a dict the keyword arguments (the convention of ``nnic.speedup_model``)."""
    if isinstance(example_input, torch.Tensor):
        return model(example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    raise TypeError(f"example_input: expected a tensor, a tuple/list of positional arguments or a dict of keyword "
                    f"arguments, got {type(example_input).__name__}")


def with_batch(example_input: Any, batch: int) -> Any:
    """``example_input`` with every tensor's first dimension made ``batch`` long, by repeating its first sample."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if isinstance(example_input, torch.Tensor):
        if example_input.dim() == 0:
            raise ValueError("batch: the example input is a 0-d tensor, it has no batch dimension to resize")
        first = example_input[:1]
        return first.expand(batch, *first.shape[1:]).contiguous()
    if isinstance(example_input, (tuple, list)):
        return type(example_input)(with_batch(x, batch) for x in example_input)
    if isinstance(example_input, dict):
        return {k: with_batch(v, batch) for k, v in example_input.items()}
    return example_input


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` threads (the current setting when ``None``), restored afterwards; yields the
    number in use. Both torch's intra-op pool and nnic's kernel pool (which the int8 GEMM runs on) are set:
    a low-bit model measured "at 1 thread" must not run its kernels on more."""
    from nnic import kernels

    previous = torch.get_num_threads(), kernels.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
        kernels.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous[0])
        kernels.set_num_threads(previous[1])


class eval_mode:
    """Put a model in eval mode for a measurement and give every submodule its own mode back afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: dict[nn.Module, bool] = {}

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode
