"""Slim pruner (network slimming, Liu et al. 2017) as a built-in plugin: prune channels by |BatchNorm gamma|.

Select the normalisation layers (``op_types: ["BatchNorm2d"]``); the channels with the smallest scaling factors
go (masked in the norm layer and in the layer that produces them). Slimming trains with an L1 penalty on the
scaling factors first; give ``evaluator=`` and ``training_steps`` and :meth:`compress` runs that training, or
add :meth:`SlimPruner.penalty` to your own loss (or call :meth:`SlimPruner.attach_penalty` to add its gradient to
every backward pass until the returned handle is removed).
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.pruning.structured import _NORMS, StructuredPruner


class SlimPruner(StructuredPruner):
    name = "slim"
    aliases = ("network_slimming",)

    def __init__(self, model: nn.Module, config_list: list[dict], *, scale: float = 1e-4, **kwargs) -> None:
        super().__init__(model, config_list, **kwargs)
        for name, cfg in self.layers.items():
            if not isinstance(cfg.module, _NORMS) or not getattr(cfg.module, "affine", True):
                raise ValueError(f"slim prunes by the scaling factors of normalisation layers; {name!r} is a "
                                 f"{type(cfg.module).__name__} (select op_types ['BatchNorm2d'], say)")
        self.scale = float(scale)

    def gammas(self) -> list[torch.Tensor]:
        return [cfg.module.weight for cfg in self.layers.values()]

    def penalty(self) -> torch.Tensor:
        """``scale * sum |gamma|`` over the selected layers: add it to the training loss."""
        return self.scale * sum(g.abs().sum() for g in self.gammas())

    def attach_penalty(self):
        """Add the penalty's gradient ``scale * sign(gamma)`` to every backward pass; returns a handle whose
        ``remove()`` stops it."""
        hooks = [g.register_hook(lambda grad, g=g: grad + self.scale * torch.sign(g.detach())) for g in self.gammas()]

        class Handle:
            def remove(self) -> None:
                for h in hooks:
                    h.remove()

        return Handle()

    def channel_scores(self) -> dict[str, torch.Tensor]:
        if self.evaluator is not None:
            with torch.enable_grad():
                self.evaluator.train(self.model, max_steps=self.training_steps, loss_hooks=[self.penalty])
        return {n: cfg.module.weight.detach().abs() for n, cfg in self.layers.items()}

    def _following_norms(self) -> dict[str, str]:
        return {}

    def calculate_masks(self):
        masks = super().calculate_masks()
        producers = self._producers()
        for norm, prod in producers.items():
            if norm in masks and prod not in masks:
                from nnic.pruning.structured import _row_mask

                keep = masks[norm]["weight"]
                module = self.model.get_submodule(prod)
                masks[prod] = {"weight": _row_mask(module, keep.cpu())}
                if getattr(module, "bias", None) is not None:
                    masks[prod]["bias"] = keep.clone()
        return masks

    def _producers(self) -> dict[str, str]:
        """Norm layer -> the conv/linear right before it with as many output channels (module order)."""
        modules = list(self.model.named_modules())
        out = {}
        for i, (name, m) in enumerate(modules):
            if name not in self.layers:
                continue
            for prev_name, prev in reversed(modules[max(0, i - 2):i]):
                w = getattr(prev, "weight", None)
                if isinstance(prev, (nn.modules.conv._ConvNd, nn.Linear)) and w is not None:
                    from nnic.pruning.structured import out_channels

                    if out_channels(prev) == m.num_features:
                        out[name] = prev_name
                    break
        return out


@nnic.hookimpl
def register_pruners(register) -> None:
    register(SlimPruner)
