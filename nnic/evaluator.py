"""How an algorithm that needs training or evaluation gets it from the user without owning the user's loop.

An :class:`Evaluator` carries the user's training function, an optimizer and LR scheduler that can be made
afresh, the loss criterion, an evaluation function returning a score (higher is better) and a dummy input.
Algorithms call :meth:`Evaluator.train` and :meth:`Evaluator.evaluate`; they never see the data.

The training function is the user's own loop with this signature (the NNI ``TorchEvaluator`` one)::

    def training_func(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs):
        for epoch in range(max_epochs or 1):
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()

Every :meth:`~Evaluator.train` call builds a *new* optimizer (and scheduler) over the model's current
parameters, because an algorithm may have added parameters (LSQ step sizes), replaced modules (speedup) or
rewound weights (lottery ticket) since the last call. The optimizer is given either as a factory
``lambda params: torch.optim.SGD(params, lr=0.1)`` or as an optimizer instance, which is re-created as
``type(opt)(params, **opt.defaults)``; the scheduler is a factory ``lambda optimizer: StepLR(optimizer, 10)``.

The criterion and optimizer the training function receives are instrumented: algorithms add loss terms (ADMM's
penalty) and per-step callbacks (movement pruning's schedule), and ``max_steps`` is enforced by stopping the
loop after that many optimizer steps even if the loop ignores it. A loop that ignores ``max_epochs`` runs its
own number of epochs.

:class:`LoopEvaluator` is the ready-made version for the common case: a supervised loop over a ``DataLoader``
and an accuracy score.

Runnable example (``python -m nnic.evaluator`` runs it)::

    import torch
    from torch import nn
    import nnic
    from nnic.evaluator import LoopEvaluator

    torch.manual_seed(0)
    x, y = torch.randn(512, 16), torch.randint(0, 4, (512,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    evaluator = LoopEvaluator(data, lambda p: torch.optim.Adam(p, lr=1e-2), nn.CrossEntropyLoss(),
                              eval_data=data, dummy_input=x[:1])
    evaluator.train(model, max_epochs=5)
    pruner = nnic.pruner("agp", model, [{"sparsity": 0.5, "op_types": ["Linear"]}],
                         evaluator=evaluator, total_iteration=3, training_epochs=1)
    model, masks = pruner.compress()
    print(evaluator.evaluate(model))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["Evaluator", "LoopEvaluator", "TorchEvaluator", "accuracy"]

LossHook = Callable[[], torch.Tensor]
StepHook = Callable[[int], None]


class _StopTraining(Exception):
    """Raised from the optimizer's step hook once ``max_steps`` steps have run."""


def _optimizer_factory(optimizer: Any) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    if isinstance(optimizer, torch.optim.Optimizer):
        cls, defaults = type(optimizer), dict(optimizer.defaults)
        return lambda params: cls(params, **defaults)
    if callable(optimizer):
        return optimizer
    raise TypeError(f"optimizer: expected a torch.optim.Optimizer or a callable params -> optimizer, "
                    f"got {type(optimizer).__name__}")


def _scheduler_factory(lr_scheduler: Any) -> Callable[[torch.optim.Optimizer], Any] | None:
    if lr_scheduler is None:
        return None
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError("lr_scheduler: expected a callable optimizer -> scheduler (it must be re-created with each "
                        "new optimizer), got a scheduler instance; pass e.g. "
                        "lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10)")
    if not callable(lr_scheduler):
        raise TypeError(f"lr_scheduler: expected a callable optimizer -> scheduler, got {type(lr_scheduler).__name__}")
    return lr_scheduler


class Evaluator:
    """The user's training loop, optimizer, criterion, evaluation function and dummy input, for algorithms.

    :param training_func: ``training_func(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs)``,
        the user's loop (see the module docstring).
    :param optimizer: an optimizer instance (re-created as ``type(opt)(params, **opt.defaults)``) or a factory
        ``params -> optimizer``.
    :param criterion: ``criterion(output, target) -> loss``.
    :param lr_scheduler: ``None`` or a factory ``optimizer -> scheduler``.
    :param dummy_input: an input the model accepts (for speedup and tracing).
    :param evaluating_func: ``evaluating_func(model) -> float``, higher is better (accuracy, -loss...).
    """

    def __init__(self, training_func: Callable[..., Any], optimizer: Any, criterion: Callable[..., torch.Tensor],
                 lr_scheduler: Any = None, dummy_input: Any = None,
                 evaluating_func: Callable[[nn.Module], float] | None = None) -> None:
        if not callable(training_func):
            raise TypeError(f"training_func: expected a callable, got {type(training_func).__name__}")
        if not callable(criterion):
            raise TypeError(f"criterion: expected a callable, got {type(criterion).__name__}")
        if evaluating_func is not None and not callable(evaluating_func):
            raise TypeError(f"evaluating_func: expected a callable, got {type(evaluating_func).__name__}")
        self.training_func = training_func
        self.make_optimizer = _optimizer_factory(optimizer)
        self.make_lr_scheduler = _scheduler_factory(lr_scheduler)
        self.criterion = criterion
        self.dummy_input = dummy_input
        self.evaluating_func = evaluating_func
        self.total_steps = 0  # optimizer steps run through this evaluator, all train() calls together

    def train(self, model: nn.Module, *, max_steps: int | None = None, max_epochs: int | None = None,
              loss_hooks: Iterable[LossHook] = (), step_hooks: Iterable[StepHook] = ()) -> int:
        """Train ``model`` with a fresh optimizer (and scheduler); returns the number of optimizer steps run.

        ``loss_hooks`` are added to every loss the criterion computes; ``step_hooks`` are called with the
        running step count (of this call, from 1) after every optimizer step. Training stops after ``max_steps``
        optimizer steps, whether or not the user's loop checks it.
        """
        for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        loss_hooks, step_hooks = list(loss_hooks), list(step_hooks)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.make_optimizer(params)
        scheduler = self.make_lr_scheduler(optimizer) if self.make_lr_scheduler is not None else None
        steps = 0

        def after_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
            nonlocal steps
            steps += 1
            self.total_steps += 1
            for hook in step_hooks:
                hook(steps)
            if max_steps is not None and steps >= max_steps:
                raise _StopTraining

        def criterion(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = self.criterion(*args, **kwargs)
            for hook in loss_hooks:
                loss = loss + hook()
            return loss

        handle = optimizer.register_step_post_hook(after_step)
        was_training = model.training
        model.train()
        try:
            self.training_func(model, optimizer, criterion, scheduler, max_steps, max_epochs)
        except _StopTraining:
            pass
        finally:
            handle.remove()
            model.train(was_training)
        return steps

    def evaluate(self, model: nn.Module) -> float:
        """The score of ``model`` (higher is better), computed in eval mode without gradients."""
        if self.evaluating_func is None:
            raise RuntimeError("this evaluator has no evaluating_func; pass one to score models")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(self.evaluating_func(model))
        finally:
            model.train(was_training)


TorchEvaluator = Evaluator  # the NNI name


def accuracy(model: nn.Module, data: Iterable[Any]) -> float:
    """Top-1 accuracy, in percent, of ``model`` over ``(input, target)`` batches."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    for x, y in data:
        prediction = model(x.to(device)).argmax(dim=-1)
        correct += int((prediction == y.to(device)).sum())
        total += int(y.numel())
    return 100.0 * correct / max(total, 1)


class LoopEvaluator(Evaluator):
    """A ready-made :class:`Evaluator`: a plain supervised loop over ``(input, target)`` batches.

    Each epoch iterates ``train_data`` once (zero_grad, forward, criterion, backward, step) and then steps
    the scheduler; without ``max_epochs`` or ``max_steps`` it runs ``epochs`` epochs. ``evaluate`` returns
    ``metric(model, eval_data)``, top-1 accuracy in percent by default.
    """

    def __init__(self, train_data: Iterable[Any], optimizer: Any, criterion: Callable[..., torch.Tensor], *,
                 eval_data: Iterable[Any] | None = None, lr_scheduler: Any = None, dummy_input: Any = None,
                 metric: Callable[[nn.Module, Iterable[Any]], float] = accuracy, epochs: int = 1) -> None:
        self.train_data, self.eval_data, self.metric, self.epochs = train_data, eval_data, metric, epochs
        evaluating = None if eval_data is None else (lambda model: metric(model, eval_data))
        super().__init__(self._loop, optimizer, criterion, lr_scheduler, dummy_input, evaluating)

    def _loop(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable[..., torch.Tensor],
              lr_scheduler: Any, max_steps: int | None, max_epochs: int | None) -> None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        epochs = max_epochs if max_epochs is not None else (None if max_steps is not None else self.epochs)
        epoch = 0
        while epochs is None or epoch < epochs:
            for x, y in self.train_data:
                optimizer.zero_grad()
                loss = criterion(model(x.to(device)), y.to(device))
                loss.backward()
                optimizer.step()  # stops the loop (through the evaluator) after max_steps steps
            if lr_scheduler is not None:
                lr_scheduler.step()
            epoch += 1


if __name__ == "__main__":  # the module docstring's example
    example = __doc__.split("Runnable example (``python -m nnic.evaluator`` runs it)::", 1)[1]
    exec(compile("\n".join(line[4:] for line in example.splitlines()), "<nnic.evaluator example>", "exec"))
