"""The sequential calibration runner: compress a language model block by block on its own activations.

1. *Capture.* Calibration batches run through the model until the first block, where a hook records the
   block's inputs (hidden states and the keyword arguments the model passes it: attention mask, rotary
   embeddings, ...) and stops the forward pass. Nothing after the first block runs.
2. *Per block.* The block runs on the stored inputs while hooks show each selected layer its inputs (the
   algorithm accumulates what it needs: a Hessian, input norms, activation ranges). With ``true_sequential``
   the layers are compressed in stages, layers reading the same tensor (q, k, v) forming one stage, and each
   stage observes inputs produced by the stages already compressed. Then the block runs once more with its
   compressed layers; its outputs replace its inputs in place and feed the next block.

So every block sees activations produced by the already-compressed blocks before it, and memory holds one
block's activations (plus one block's original weights, kept to measure each layer's reconstruction error
``||y' - y||^2 / ||y||^2`` on those inputs). If anything fails, every compressed weight is restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nnic.llm import layers as L
from nnic.llm.blocks import find_blocks, layer_blocks
from nnic.masking import parameter

__all__ = ["LayerAlgorithm", "LayerReport", "SequentialRunner"]

logger = logging.getLogger("nnic.llm")


class LayerAlgorithm(Protocol):
    """What the runner asks of a one-shot algorithm."""

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        """See one batch of ``name``'s inputs, ``x`` as float32 ``[tokens, in_features]``."""

    def compress_group(self, names: list[str], modules: list[nn.Module]) -> None:
        """Compress layers that read the same input (``names``), all observed; write their new weights."""

    def undo(self) -> None:
        """Forget everything attached to the model (called when the run fails)."""


@dataclass
class LayerReport:
    """One layer's outcome: its block, and the relative error of its output on the calibration inputs."""

    name: str
    block: str
    relative_error: float
    seconds: float


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _is_cache(value: Any) -> bool:
    return any(c.__name__.endswith("Cache") for c in type(value).__mro__)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (``LlamaRMSNorm``...), recognised by class name."""
    return type(module).__name__.endswith("Norm") or isinstance(module, nn.LayerNorm)


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _call(model: nn.Module, batch: Any, device: torch.device) -> None:
    if isinstance(batch, dict):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    else:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration_data: expected batches of tensors, (input, ...) tuples or dicts of "
                            f"model arguments, got {type(x).__name__}")
        model(x.to(device))


def _progress(items: Sequence[Any], desc: str, enabled: bool | None) -> Iterable[Any]:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="block", disable=None if enabled is None else not enabled, leave=False)


class SequentialRunner:
    """Run a :class:`LayerAlgorithm` over the selected layers of ``model``, block by block.

    :param calibration_data: an iterable of model inputs (tensors, ``(input, ...)`` tuples or dicts of keyword
        arguments), as for the ``ptq`` quantizer; at most ``calibration_steps`` batches are used.
    :param blocks: ``None`` (detect), a module-list name, or a list of block names (see :mod:`nnic.llm.blocks`).
    :param progress: a progress bar per block (tqdm, when installed); ``None`` shows it on terminals only.
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module], calibration_data: Iterable[Any] | None, *,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None, true_sequential: bool = False, name: str = "one-shot") -> None:
        if calibration_data is None:
            raise ValueError("calibration_data: expected an iterable of model inputs (e.g. a list of token-id "
                             "tensors), got None; one-shot algorithms need a few hundred calibration samples")
        if isinstance(calibration_data, (torch.Tensor, str, bytes)) or not isinstance(calibration_data, Iterable):
            raise TypeError(f"calibration_data: expected an iterable of model inputs (a list of batches), got "
                            f"{type(calibration_data).__name__}")
        self.model, self.layers, self.data = model, layers, calibration_data
        self.blocks = find_blocks(model, blocks)
        self.owner = layer_blocks(self.blocks, list(layers))
        for name, module in layers.items():
            L.check_supported(name, module)
        self.steps, self.progress, self.true_sequential, self.name = calibration_steps, progress, true_sequential, name
        self.reports: list[LayerReport] = []
        self.activation_bytes = 0
        self.peak_activation_bytes = 0
        self._feeders: dict[str, nn.Module] = {}
        self._norm_backup: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- capture ---------------------------------------------------------------------------------------------
    def _capture(self) -> list[tuple[tuple, dict]]:
        first = self.blocks[0][1]
        device = _device(self.model)
        inputs: list[tuple[tuple, dict]] = []

        def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
            if "use_cache" in kwargs:
                kwargs["use_cache"] = False
            if not args:  # hidden states passed by keyword
                args = (kwargs.pop("hidden_states"),)
            inputs.append((tuple(args), kwargs))
            raise _Stop

        handle = first.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for step, batch in enumerate(self.data):
                if self.steps is not None and step >= self.steps:
                    break
                try:
                    _call(self.model, batch, device)
                except _Stop:
                    pass
                else:
                    raise ValueError(f"blocks: the model's forward pass never reached {self.blocks[0][0]!r}")
        finally:
            handle.remove()
        if not inputs:
            raise ValueError("calibration_data: expected at least one batch, got none")
        for i, (args, _) in enumerate(inputs):
            if not bool(torch.isfinite(args[0]).all()):
                raise ValueError(f"calibration_data: batch {i} gives NaN or infinite activations at the input of "
                                 f"{self.blocks[0][0]!r}")
        self.activation_bytes = sum(a[0].numel() * a[0].element_size() for a, _ in inputs)
        self.peak_activation_bytes = self.activation_bytes
        return inputs

    # -- one block -------------------------------------------------------------------------------------------
    def _forward_all(self, block: nn.Module, inputs: list[tuple[tuple, dict]], keep: bool) -> None:
        for i, (args, kwargs) in enumerate(inputs):
            try:
                out = _first(block(*args, **kwargs))
            except _Stop:
                continue
            if keep:  # the output replaces the input: one block's activations in memory
                inputs[i] = ((out.detach(),) + args[1:], kwargs)
        if keep:
            self.activation_bytes = sum(a[0].numel() * a[0].element_size() for a, _ in inputs)
            self.peak_activation_bytes = max(self.peak_activation_bytes, self.activation_bytes)

    def _stages(self, block_name: str, block: nn.Module, names: list[str],
                inputs: list[tuple[tuple, dict]]) -> list[list[str]]:
        """Selected layers grouped by the tensor they read, in the order the block runs them (batch 0).

        Also records which normalisation layer, if any, produced each group's input (see :meth:`fold_scale`).
        """
        seen: dict[str, tuple] = {}
        order: list[str] = []
        norm_out: dict[tuple, list[nn.Module]] = {}

        def hook(name: str) -> Callable:
            def record(_m: nn.Module, args: tuple) -> None:
                if name not in seen:
                    x = args[0]
                    seen[name] = (x.data_ptr(), tuple(x.shape))
                    order.append(name)
                if len(order) == len(names):
                    raise _Stop
            return record

        def record_norm(m: nn.Module, _args: tuple, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                norm_out.setdefault((out.data_ptr(), tuple(out.shape)), []).append(m)

        handles = [self.layers[n].register_forward_pre_hook(hook(n)) for n in names]
        handles += [m.register_forward_hook(record_norm) for m in block.modules() if _is_norm(m)]
        try:
            self._forward_all(block, inputs[:1], keep=False)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in seen]
        if missing:
            raise ValueError(f"{block_name}: the block's forward pass never calls {missing}; exclude them")
        groups: dict[tuple, list[str]] = {}
        for n in order:
            groups.setdefault(seen[n], []).append(n)
        for key, group in groups.items():
            feeders = norm_out.get(key, [])
            if len(feeders) == 1:
                self._feeders[group[0]] = feeders[0]
        return list(groups.values())

    def can_fold(self, names: list[str], channels: int) -> bool:
        """Whether :meth:`fold_scale` can scale the input of ``names`` exactly."""
        weight = getattr(self._feeders.get(names[0]), "weight", None)
        return isinstance(weight, torch.Tensor) and tuple(weight.shape) == (channels,)

    def fold_scale(self, names: list[str], inverse: torch.Tensor) -> bool:
        """Divide the input of the layers ``names`` (one stage group) by ``inverse``, if that is exact.

        Exact when their input is the output of a normalisation layer with an affine weight (LayerNorm,
        RMSNorm: the pre-attention and pre-MLP norms of GPT-2, OPT, LLaMA...): its weight and bias are divided
        by ``inverse``. AWQ and SmoothQuant multiply the layers' weight columns by ``inverse`` afterwards. Returns
        False (and changes nothing) when there is no such layer.
        """
        if not self.can_fold(names, inverse.numel()):
            return False
        norm = self._feeders[names[0]]
        weight = norm.weight
        bias = getattr(norm, "bias", None)
        for pname, t in (("weight", weight), ("bias", bias)):
            if isinstance(t, torch.Tensor):
                self._norm_backup.setdefault((id(norm), pname), (t, t.detach().clone()))
                t.data.div_(inverse.to(t.device, t.dtype))
        return True

    def _observe(self, block_name: str, block: nn.Module, names: list[str], inputs: list[tuple[tuple, dict]],
                 algorithm: LayerAlgorithm) -> None:
        def hook(name: str) -> Callable:
            def see(module: nn.Module, args: tuple) -> None:
                x = args[0].detach()
                x = x.reshape(-1, x.shape[-1]).float()
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"{name}: NaN or infinite values in the layer's calibration inputs (block "
                                     f"{block_name!r}); check the calibration data and the model")
                algorithm.observe(name, module, x)
            return see

        def last(_m: nn.Module, _args: tuple, _out: Any) -> None:
            raise _Stop  # the stage's last layer has run: the rest of the block is not needed

        handles = [self.layers[n].register_forward_pre_hook(hook(n)) for n in names]
        handles.append(self.layers[names[-1]].register_forward_hook(last))
        try:
            self._forward_all(block, inputs, keep=False)
        finally:
            for h in handles:
                h.remove()

    def _outputs(self, block: nn.Module, names: list[str], originals: dict[str, tuple[torch.Tensor, Any]],
                 inputs: list[tuple[tuple, dict]]) -> dict[str, float]:
        """Run the compressed block, keep its outputs, and measure each layer against its original weight."""
        err = dict.fromkeys(names, 0.0)
        ref = dict.fromkeys(names, 0.0)
        stash: dict[str, torch.Tensor] = {}

        def pre(name: str) -> Callable:
            def keep_input(_m: nn.Module, args: tuple) -> None:
                stash[name] = args[0].detach()
            return keep_input

        def post(name: str) -> Callable:
            def measure(_m: nn.Module, _args: tuple, out: Any) -> None:
                w, b = originals[name]
                x = stash.pop(name)
                y = F.linear(x.to(w.dtype), w, b)
                err[name] += float((_first(out).to(w.dtype) - y).pow(2).sum())
                ref[name] += float(y.pow(2).sum())
            return measure

        handles = []
        for n in names:
            handles.append(self.layers[n].register_forward_pre_hook(pre(n), prepend=True))
            handles.append(self.layers[n].register_forward_hook(post(n)))
        try:
            self._forward_all(block, inputs, keep=True)
        finally:
            for h in handles:
                h.remove()
        return {n: err[n] / ref[n] if ref[n] > 0 else float(err[n] > 0) for n in names}

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, algorithm: LayerAlgorithm) -> list[LayerReport]:
        """Compress every selected layer; on any error restore the weights and re-raise."""
        backup: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            return self._run_all(algorithm, backup)

    def _run_all(self, algorithm: LayerAlgorithm, backup: dict[str, torch.Tensor]) -> list[LayerReport]:
        try:
            inputs = self._capture()
            todo = [(i, b) for i, b in enumerate(self.blocks) if any(o == i for o in self.owner.values())]
            for i, (block_name, block) in _progress(todo, f"{self.name}", self.progress):
                names = [n for n in self.layers if self.owner[n] == i]
                self._run_block(block_name, block, names, inputs, algorithm, backup)
        except BaseException:
            with torch.no_grad():
                for name, saved in backup.items():
                    parameter(self.layers[name], "weight").copy_(saved)
                for t, saved in self._norm_backup.values():
                    t.copy_(saved)
            algorithm.undo()
            self.reports.clear()
            raise
        finally:
            self._norm_backup.clear()
        return self.reports

    def _run_block(self, block_name: str, block: nn.Module, names: list[str], inputs: list[tuple[tuple, dict]],
                   algorithm: LayerAlgorithm, backup: dict[str, torch.Tensor]) -> None:
        start = time.perf_counter()
        originals = {}
        for n in names:
            m = self.layers[n]
            backup[n] = parameter(m, "weight").detach().to("cpu", copy=True)
            bias = getattr(m, "bias", None)
            originals[n] = (L.weight_matrix(m), None if bias is None else bias.detach().float().clone())
        stages = self._stages(block_name, block, names, inputs)
        timing: dict[str, float] = {}
        plan = [[g] for g in stages] if self.true_sequential else [stages]
        for groups in plan:
            self._observe(block_name, block, [n for g in groups for n in g], inputs, algorithm)
            for group in groups:
                t0 = time.perf_counter()
                algorithm.compress_group(group, [self.layers[n] for n in group])
                for n in group:
                    timing[n] = (time.perf_counter() - t0) / len(group)
        errors = self._outputs(block, names, originals, inputs)
        for n in names:
            self.reports.append(LayerReport(n, block_name, errors[n], timing[n]))
            logger.info("%s: %s relative output error %.3g", self.name, n, errors[n])
        logger.info("%s: block %s done in %.1f s", self.name, block_name, time.perf_counter() - start)
