"""Knowledge distillation to recover a compressed model's accuracy: the student (pruned, quantized...) learns
the dense teacher's softened logits, and optionally its hidden states, besides the labels.

Why: after pruning, the labels alone say little per example (one class); the teacher's logits say how it ranks
every class, and its hidden states what each block computed, so the student recovers more in the same number
of steps. The loss per batch ``(x, y)`` is::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * criterion(student, y)
        + hidden_weight * mean over pairs of MSE(student hidden, teacher hidden)

It plugs into nnic's algorithms through an :class:`~nnic.evaluator.Evaluator`: :func:`distillation_loop` is a
training function with the evaluator signature, so iterative pruners fine-tune by distillation between rounds::

    evaluator = Evaluator(distillation_loop(teacher, loader), lambda p: torch.optim.Adam(p, 1e-3), criterion)
    distill(student, teacher, loader, steps=200)           # the same, in one call

A progress bar (tqdm, when installed) shows the loss; ``progress=False`` turns it off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnic.evaluator import Evaluator

__all__ = ["distill", "distillation_loop", "logits_of"]


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, a ``.logits`` attribute, or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"distillation: cannot find logits in a model output of type {type(output).__name__}")


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


class _Hidden:
    """Forward hooks recording the first tensor output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], side: str) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"hidden_states: {missing} are not modules of the {side} ({type(model).__name__})")
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: self._keep(n, out)) for n in names]

    def _keep(self, name: str, out: Any) -> None:
        self.values[name] = out if isinstance(out, torch.Tensor) else logits_of(out)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="distill", unit="step", file=sys.stderr, leave=False)


def distillation_loop(teacher: nn.Module, data: Iterable[Any], *, temperature: float = 1.0, alpha: float = 0.5,
                      hidden_states: Sequence[tuple[str, str]] = (), hidden_weight: float = 1.0,
                      progress: bool = True) -> Callable[..., None]:
    """A training function for :class:`~nnic.evaluator.Evaluator` that distils ``teacher`` into the model it
    trains, over ``(inputs, target)`` batches of ``data`` (inputs: a tensor, a tuple of positional arguments
    or a dict of keyword arguments).

    :param temperature: softens both distributions (``T`` above); > 0.
    :param alpha: weight of the distillation term against the evaluator's criterion on the labels, in [0, 1].
    :param hidden_states: ``(student module, teacher module)`` name pairs whose outputs must match (same shape).
    :param hidden_weight: weight of the hidden-state terms.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    pairs = [tuple(p) for p in hidden_states]
    if any(len(p) != 2 or not all(isinstance(n, str) for n in p) for p in pairs):
        raise TypeError(f"hidden_states: expected (student module name, teacher module name) pairs, got {hidden_states!r}")

    def loop(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable[..., torch.Tensor],
             lr_scheduler: Any, max_steps: int | None, max_epochs: int | None) -> None:
        student_h = _Hidden(model, [s for s, _ in pairs], "student")
        teacher_h = _Hidden(teacher, [t for _, t in pairs], "teacher")
        bar = _progress(max_steps, progress)
        teacher_mode = teacher.training
        teacher.eval()
        try:
            epochs = max_epochs if max_epochs is not None else (None if max_steps is not None else 1)
            epoch = 0
            while epochs is None or epoch < epochs:
                for x, y in data:
                    with torch.no_grad():
                        t_logits = logits_of(_call(teacher, x))
                    s_logits = logits_of(_call(model, x))
                    loss = alpha * temperature ** 2 * F.kl_div(
                        F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                        reduction="batchmean", log_target=True)
                    if alpha < 1:
                        loss = loss + (1 - alpha) * criterion(s_logits, y)
                    for s_name, t_name in pairs:
                        s, t = student_h.values[s_name], teacher_h.values[t_name]
                        if s.shape != t.shape:
                            raise ValueError(f"hidden_states: {s_name!r} gives {tuple(s.shape)} but {t_name!r} "
                                             f"gives {tuple(t.shape)}; match modules of the same width")
                        loss = loss + hidden_weight * F.mse_loss(s, t.detach()) / len(pairs)
                    optimizer.zero_grad()
                    loss.backward()
                    if bar is not None:
                        bar.set_postfix(loss=f"{float(loss):.4f}")
                        bar.update(1)
                    optimizer.step()  # the evaluator stops the loop after max_steps steps
                if lr_scheduler is not None:
                    lr_scheduler.step()
                epoch += 1
        finally:
            teacher.train(teacher_mode)
            student_h.remove()
            teacher_h.remove()
            if bar is not None:
                bar.close()

    return loop


def distill(student: nn.Module, teacher: nn.Module, data: Iterable[Any], *, steps: int | None = None,
            epochs: int | None = None, optimizer: Any = None, criterion: Callable[..., torch.Tensor] | None = None,
            **options: Any) -> int:
    """Fine-tune ``student`` against ``teacher`` for ``steps`` optimizer steps (or ``epochs``; one epoch if
    neither) with a fresh optimizer (Adam, lr 1e-3, by default); returns the number of steps run. ``options``
    are those of :func:`distillation_loop`; ``criterion`` is the label loss (cross-entropy by default)."""
    evaluator = Evaluator(distillation_loop(teacher, data, **options),
                          optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3)),
                          criterion or nn.CrossEntropyLoss())
    return evaluator.train(student, max_steps=steps, max_epochs=epochs)
