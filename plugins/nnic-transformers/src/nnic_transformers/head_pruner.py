"""``transformer_head``: prune whole attention heads of Hugging Face (or user-described) attention modules.

The unit of pruning is a key/value head with every query head that reads it (grouped-query attention: LLaMA,
Qwen2, Mistral); without grouped-query attention it is one head. A pruned unit is masked in all of its
projections together (query, key and value rows, output-projection columns; the fused ``c_attn`` columns and
``c_proj`` rows of GPT-2), so the masked model computes exactly what the model without those heads computes,
and :func:`nnic.speedup_model` removes them.

Scores (higher is more important), per query head, summed over a unit's query heads:

- ``l1_weight`` / ``l2_weight``: L1 / L2 norm of the head's weights in every projection;
- ``l1_activation`` / ``l2_activation``: mean L1 / L2 norm, per token, of the head's context (what it hands
  the output projection), over ``data`` or the ``evaluator``'s training steps;
- ``taylorfo``: first-order Taylor estimate of the loss change when the head is removed,
  ``|sum(context * d loss / d context)|``, accumulated over ``data`` (with ``criterion``) or the evaluator's steps.

``sparsity`` prunes ``floor(sparsity * units)`` units of each selected module; ``total_sparsity`` ranks the
units of all modules an entry selects together (global sort; ``max_sparsity_per_layer`` caps a module). A
module keeps at least one unit. With ``total_iteration=T`` and an ``evaluator``, pruning runs in T rounds on the
linear schedule ``s t / T``, fine-tuning (``training_steps`` / ``training_epochs``) between rounds with the masks
applied; pruned units stay pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nnic import masking
from nnic.masking import Masks
from nnic.pruning import Pruner
from nnic.selection import amount
from nnic_transformers.layouts import Heads, Layout, heads_of, layout_of

CRITERIA = ("l1_weight", "l2_weight", "l1_activation", "l2_activation", "taylorfo")


def _attention_names(model: nn.Module, extra: Mapping[Any, Layout]) -> list[str]:
    names = {type(m).__name__ for n, m in model.named_modules() if _layout(n, m, extra) is not None}
    return sorted(names)


def _layout(name: str, module: nn.Module, extra: Mapping[Any, Layout]) -> Layout | None:
    if name in extra:
        return extra[name]
    return layout_of(module, {k: v for k, v in extra.items() if isinstance(k, type)})


class TransformerHeadPruner(Pruner):
    """Whole attention heads (see the module docstring).

    :param config_list: entries select attention modules (``op_types: ["BertSelfAttention"]``, ``op_names``; an
        entry without ``op_types`` selects among the attention modules nnic knows in the model) with
        ``sparsity`` or ``total_sparsity``.
    :param criterion: one of :data:`CRITERIA`.
    :param layouts: extra attention modules: ``{module class or module name: Layout}``.
    :param data: batches of model inputs (activation criteria) or ``(inputs, target)`` pairs (``taylorfo``, with
        ``loss_fn``); or ``evaluator`` (its training loop runs ``training_steps`` steps while scores collect).
    :param total_iteration, training_steps, training_epochs: iterative pruning, fine-tuning through
        ``evaluator`` between rounds.
    """

    name = "transformer_head"

    def __init__(self, model: nn.Module, config_list: list[dict], *, criterion: str = "l1_weight",
                 layouts: Mapping[Any, Layout] | None = None, data: Iterable[Any] | None = None,
                 loss_fn: Callable[..., torch.Tensor] | None = None, evaluator: Any = None,
                 training_steps: int | None = 20, training_epochs: int | None = None,
                 total_iteration: int = 1) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: expected one of {', '.join(CRITERIA)}, got {criterion!r}")
        extra = dict(layouts or {})
        for key, value in extra.items():
            if not isinstance(key, (str, type)) or not isinstance(value, Layout):
                raise TypeError(f"layouts: expected {{module class or name: Layout}}, got {key!r}: "
                                f"{type(value).__name__}")
        if not isinstance(total_iteration, int) or isinstance(total_iteration, bool) or total_iteration < 1:
            raise ValueError(f"total_iteration: expected an int >= 1, got {total_iteration!r}")
        if total_iteration > 1 and evaluator is None:
            raise ValueError("total_iteration > 1 fine-tunes between rounds: pass evaluator=...")
        if criterion not in ("l1_weight", "l2_weight") and data is None and evaluator is None:
            raise ValueError(f"criterion {criterion!r} needs data: pass data=... (batches) or evaluator=...")
        if criterion == "taylorfo" and evaluator is None and loss_fn is None:
            raise ValueError("criterion 'taylorfo' with data=... needs loss_fn=... (loss of (output, target))")
        if isinstance(config_list, list):
            found = _attention_names(model, extra)
            config_list = [dict(e, op_types=found) if isinstance(e, dict) and "op_types" not in e else e
                           for e in config_list]
        super().__init__(model, config_list)
        self.criterion, self.extra, self.data, self.loss_fn = criterion, extra, data, loss_fn
        self.evaluator, self.training_steps, self.training_epochs = evaluator, training_steps, training_epochs
        self.total_iteration, self.fraction = total_iteration, 1.0
        self.heads: dict[str, Heads] = {}
        for name, cfg in self.layers.items():
            layout = _layout(name, cfg.module, extra)
            if layout is None:
                raise ValueError(f"config_list: {name!r} ({type(cfg.module).__name__}) is not an attention module "
                                 f"nnic knows; known here: {found or 'none'}; describe it with layouts={{...}}")
            self.heads[name] = heads_of(name, cfg.module, layout)

    # ---- rounds
    def compress(self) -> tuple[nn.Module, Masks]:
        for t in range(1, self.total_iteration + 1):
            self.fraction = t / self.total_iteration
            model, masks = super().compress()
            if t < self.total_iteration:
                with torch.enable_grad():
                    self.evaluator.train(self.model, max_steps=self.training_steps, max_epochs=self.training_epochs)
        return model, masks

    def calculate_masks(self) -> Masks:
        scores = self.unit_scores()
        for name, h in self.heads.items():  # units pruned in an earlier round stay pruned
            scores[name] = torch.where(self.pruned_units(h), torch.tensor(-math.inf, dtype=torch.float64),
                                       scores[name])
        pruned = self._choose(scores, self.fraction)
        return {k: v for name, units in pruned.items() for k, v in unit_masks(self.heads[name], units).items()}

    def pruned_units(self, h: Heads) -> torch.Tensor:
        """Units whose value rows are all zero already (masked)."""
        w = _head_weights(h)["v"]
        return (w.reshape(h.num_kv_heads, -1) == 0).all(1).cpu()

    def _choose(self, scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
        pruned, groups = {}, {}
        for name, cfg in self.layers.items():
            n = scores[name].numel()
            if "total_sparsity" in cfg.config:
                groups.setdefault(cfg.entry_index, []).append(name)
                continue
            k = min(amount(cfg.config["sparsity"] * fraction, n), n - 1)
            pruned[name] = _lowest(scores[name], k)
        for names in groups.values():
            entry = self.layers[names[0]].config
            flat = torch.cat([scores[n] for n in names])
            owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
            budget = amount(entry["total_sparsity"] * fraction, flat.numel())
            cap = entry.get("max_sparsity_per_layer", 1.0)
            caps = [min(amount(cap.get(n, 1.0) if isinstance(cap, dict) else cap, scores[n].numel()),
                        scores[n].numel() - 1) for n in names]
            counts = [0] * len(names)
            for idx in torch.argsort(flat, stable=True).tolist():
                if budget == 0:
                    break
                i = int(owner[idx])
                if counts[i] < caps[i]:
                    counts[i], budget = counts[i] + 1, budget - 1
            for i, n in enumerate(names):
                pruned[n] = _lowest(scores[n], counts[i])
        return pruned

    # ---- scores
    def unit_scores(self) -> dict[str, torch.Tensor]:
        """``{module: score per unit}`` (a unit: a key/value head and its query heads), higher is more important."""
        if self.criterion.endswith("_weight"):
            head = {name: _weight_scores(h, 1 if self.criterion == "l1_weight" else 2)
                    for name, h in self.heads.items()}
        else:
            head = self._activation_scores()
        return {name: head[name].reshape(h.num_kv_heads, h.group).sum(1) for name, h in self.heads.items()}

    def _activation_scores(self) -> dict[str, torch.Tensor]:
        taylor = self.criterion == "taylorfo"
        p = 1 if self.criterion in ("l1_activation", "taylorfo") else 2
        sums = {name: torch.zeros(h.num_heads, dtype=torch.float64) for name, h in self.heads.items()}
        tokens = dict.fromkeys(self.heads, 0)

        def collect(name: str, h: Heads, ctx: torch.Tensor) -> None:
            per_head = ctx.detach().reshape(-1, h.num_heads, h.head_dim).double()
            if taylor:
                if ctx.requires_grad:
                    ctx.register_hook(lambda g: _add(sums[name], (per_head * g.detach().reshape(
                        per_head.shape).double()).sum((0, 2)).cpu()))
                return
            norms = per_head.abs().sum(2) if p == 1 else per_head.pow(2).sum(2).sqrt()
            sums[name] += norms.sum(0).cpu()
            tokens[name] += per_head.shape[0]

        hooks = [_context_hook(h, lambda ctx, name=name, h=h: collect(name, h, ctx)) for name, h in self.heads.items()]
        try:
            self._run(backward=taylor)
        finally:
            for hook in hooks:
                hook.remove()
        if taylor:
            return {name: s.abs() for name, s in sums.items()}
        return {name: s / max(tokens[name], 1) for name, s in sums.items()}

    def _run(self, backward: bool) -> None:
        if self.evaluator is not None:
            with torch.enable_grad():
                self.evaluator.train(self.model, max_steps=self.training_steps, max_epochs=self.training_epochs)
            return
        was = self.model.training
        self.model.train(backward)
        try:
            for batch in self.data:
                if backward:
                    x, y = batch
                    self.model.zero_grad()
                    with torch.enable_grad():
                        self.loss_fn(_call(self.model, x), y).backward()
                else:
                    with torch.no_grad():
                        _call(self.model, batch)
        finally:
            self.model.train(was)
            self.model.zero_grad()


def _add(acc: torch.Tensor, value: torch.Tensor) -> None:
    acc += value


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    pruned = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        pruned[torch.argsort(scores, stable=True)[:k]] = True
    return pruned


def _context_hook(h: Heads, fn: Callable[[torch.Tensor], None]):
    """A hook calling ``fn`` with the heads' context ``[..., heads * head_dim]`` on every forward."""
    lay = h.layout
    if lay.o is None:  # the module's output is the context
        return h.module.register_forward_hook(lambda m, a, out: fn(out[0] if isinstance(out, tuple) else out))
    return getattr(h.module, lay.o).register_forward_pre_hook(lambda m, a: fn(a[0]))


def _head_weights(h: Heads) -> dict[str, torch.Tensor]:
    """Per projection, the weights (bias appended) with rows grouped by head: ``q``/``o`` rows per query head
    (``[heads * head_dim, ...]``), ``k``/``v`` per key/value head."""
    lay, m = h.layout, h.module
    inner_q, inner_kv = h.num_heads * h.head_dim, h.num_kv_heads * h.head_dim
    if lay.fused:  # Conv1D weight [in, 3 * inner]: q | k | v blocks along the output
        w = masking.parameter(getattr(m, lay.q), "weight").t()
        b = masking.parameter(getattr(m, lay.q), "bias")
        wb = torch.cat([w, b[:, None]], 1) if b is not None else w
        out = {"q": wb[:inner_q], "k": wb[inner_q:2 * inner_q], "v": wb[2 * inner_q:]}
        out["o"] = masking.parameter(getattr(m, lay.o), "weight")  # [inner, embed]
        return out
    out = {}
    for key, size in (("q", inner_q), ("k", inner_kv), ("v", inner_kv)):
        proj = getattr(m, getattr(lay, key))
        w, b = masking.parameter(proj, "weight"), masking.parameter(proj, "bias")
        out[key] = torch.cat([w, b[:, None]], 1) if b is not None else w
    if lay.o is not None:
        out["o"] = masking.parameter(getattr(m, lay.o), "weight").t()  # [inner, out]
    return out


def _weight_scores(h: Heads, p: int) -> torch.Tensor:
    w = _head_weights(h)
    total = torch.zeros(h.num_heads, dtype=torch.float64)
    for key, t in w.items():
        t = t.detach().double().cpu()
        rows = h.num_heads if key in ("q", "o") else h.num_kv_heads
        per = t.reshape(rows, -1)
        norm = per.abs().sum(1) if p == 1 else per.pow(2).sum(1)
        if rows != h.num_heads:  # a key/value head counts for each of its query heads, shared among them
            norm = norm.repeat_interleave(h.group) / h.group
        total += norm
    return total if p == 1 else total.sqrt()


def unit_masks(h: Heads, pruned: torch.Tensor) -> Masks:
    """Masks that remove the pruned units (a bool per key/value head) from every projection of ``h``."""
    lay, m, d, g = h.layout, h.module, h.head_dim, h.group
    kv_keep = (~pruned).repeat_interleave(d)
    q_keep = (~pruned).repeat_interleave(g * d)
    masks: Masks = {}

    def rows(attr: str, keep: torch.Tensor) -> None:
        proj = getattr(m, attr)
        w = masking.parameter(proj, "weight")
        per = {"weight": keep[:, None].expand_as(w).clone()}
        if masking.parameter(proj, "bias") is not None:
            per["bias"] = keep.clone()
        masks[_join(h.name, attr)] = per

    if lay.fused:
        conv, proj = getattr(m, lay.q), getattr(m, lay.o)
        cols = torch.cat([q_keep, q_keep, q_keep])
        w = masking.parameter(conv, "weight")
        per = {"weight": cols[None, :].expand_as(w).clone()}
        if masking.parameter(conv, "bias") is not None:
            per["bias"] = cols.clone()
        masks[_join(h.name, lay.q)] = per
        masks[_join(h.name, lay.o)] = {"weight": q_keep[:, None].expand_as(masking.parameter(proj, "weight")).clone()}
        return masks
    rows(lay.q, q_keep)
    rows(lay.k, kv_keep)
    rows(lay.v, kv_keep)
    if lay.o is not None:
        w = masking.parameter(getattr(m, lay.o), "weight")
        masks[_join(h.name, lay.o)] = {"weight": q_keep[None, :].expand_as(w).clone()}
    return masks


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


__all__ = ["CRITERIA", "TransformerHeadPruner", "unit_masks"]
