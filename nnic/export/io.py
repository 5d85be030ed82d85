"""The model's inputs and outputs as flat, named tensor lists, which is what an ONNX graph has.

``example_input`` is a tensor, a tuple/list of tensors (positional arguments) or a dict of tensors (keyword
arguments, e.g. a tokenizer's ``input_ids`` / ``attention_mask``). Outputs may be a tensor or any nesting of
tuples, lists and mappings (a Hugging Face ``ModelOutput``): they are flattened in order, ``None`` dropped, and
named by their path (``"output"``, ``"output_1"``, ``"last_hidden_state"``, ``"past_key_values.0.1"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class Inputs:
    """A checked example input: names, tensors, and how to call the model with tensors in that order."""

    def __init__(self, example_input: Any) -> None:
        if isinstance(example_input, torch.Tensor):
            self.keyword, self.names, self.tensors = False, ["input"], [example_input]
        elif isinstance(example_input, Mapping):
            self.keyword, self.names, self.tensors = True, list(example_input), list(example_input.values())
        elif isinstance(example_input, (tuple, list)):
            self.keyword, self.tensors = False, list(example_input)
            self.names = ["input"] if len(self.tensors) == 1 else [f"input_{i}" for i in range(len(self.tensors))]
        else:
            raise TypeError(f"example_input: expected a tensor, a tuple/list of tensors or a dict of tensors, got "
                            f"{type(example_input).__name__}")
        for name, t in zip(self.names, self.tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"example_input[{name!r}]: expected a tensor, got {type(t).__name__}")
        if not self.tensors:
            raise ValueError("example_input: at least one tensor is needed")

    def call(self, model: nn.Module, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Any:
        return model(**dict(zip(self.names, tensors))) if self.keyword else model(*tensors)

    def doubled_batch(self) -> list[torch.Tensor] | None:
        """The inputs at twice the batch (the example followed by itself reversed along dim 0), to check that the
        batch axis is really dynamic; None when the inputs do not share one batch size."""
        sizes = {t.shape[0] if t.dim() else None for t in self.tensors}
        if len(sizes) != 1 or None in sizes:
            return None
        return [torch.cat([t, t.flip(0)]) for t in self.tensors]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axis 0 of every input is the batch; axis 1 of 2-D integer inputs (token ids, masks) and of 3-D float
        inputs ([batch, sequence, features]) is the sequence."""
        axes: dict[str, dict[int, str]] = {}
        for name, t in zip(self.names, self.tensors):
            if t.dim() == 0:
                continue
            axes[name] = {0: "batch"}
            if (t.dim() == 2 and not t.is_floating_point()) or (t.dim() == 3 and t.is_floating_point()):
                axes[name][1] = "sequence"
        return axes


def flatten_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of a model's output, in order; raises naming what is neither."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if out is None:
        return []
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(str(i) if prefix else ("output" if i == 0 else f"output_{i}"), v) for i, v in enumerate(out)]
    else:
        raise TypeError(f"model output {prefix or '(top level)'!r}: ONNX outputs must be tensors (or tuples, lists, "
                        f"dicts of them), got {type(out).__name__}")
    flat: list[tuple[str, torch.Tensor]] = []
    for key, value in items:
        flat += flatten_outputs(value, f"{prefix}.{key}" if prefix else key)
    return flat


class Flat(nn.Module):
    """``model`` called with the example's tensors positionally, returning its flattened output tensors."""

    def __init__(self, model: nn.Module, inputs: Inputs) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs
        # In the model's mode: torch's exporter restores the wrapper's mode afterwards, recursively, and a fresh
        # module's default (training) would leave BatchNorm/Dropout of an eval model in training mode.
        self.training = model.training

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in flatten_outputs(self.inputs.call(self.model, tensors)))
