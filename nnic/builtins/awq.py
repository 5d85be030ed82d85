"""AWQ: activation-aware weight quantization: scale salient input channels up before group-wise rounding.

Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration". For the
layers that read one normalisation layer's output (q, k, v after the attention norm; the MLP's first layers
after its norm), a per-input-channel scale ``s = mean|x|^alpha`` is searched over a grid of ``alpha``
(``alpha = 0`` is plain RTN) to minimise the layers' output error on calibration tokens; the norm's weight is
divided by ``s`` and the layers' weights multiplied by it, an exact transformation, so the quantized layers
keep the plain group-wise layout. Then each group's clipping range is searched the same way (for every layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import nnic
from nnic.llm import layers as L
from nnic.llm.groupquant import GroupGrid, GroupQuant
from nnic.llm.oneshot import OneShotQuantizer

__all__ = ["AWQQuantizer"]


def _output_error(x: torch.Tensor, dw: torch.Tensor) -> float:
    return float((x @ dw.t()).pow(2).sum())


def _search_clip(grid: GroupGrid, w: torch.Tensor, x: torch.Tensor, steps: int, shrink: float) -> torch.Tensor:
    """Per row and group, the range ratio in ``[1 - shrink, 1]`` with the least output error on ``x``."""
    rows, cols = w.shape
    g = grid.size(cols)
    x3 = x.reshape(x.shape[0], cols // g, g)
    best_err = torch.full((rows, cols // g), float("inf"), device=w.device)
    best = torch.ones(rows, cols // g, device=w.device)
    for i in range(steps):
        ratio = 1.0 - shrink * i / steps
        s, z = grid.all_params(w, ratio)
        dw = (grid.fake(w, grid.expand(s, cols), grid.expand(z, cols)) - w).reshape(rows, cols // g, g)
        err = torch.einsum("tgk,rgk->tgr", x3, dw).pow(2).sum(0).t()
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best


class AWQQuantizer(OneShotQuantizer):
    """AWQ, group-wise, 2-8 bits; config keys of :class:`~nnic.llm.oneshot.OneShotQuantizer`.

    :param grid: number of ``alpha`` values searched in ``[0, 1)`` (default 20).
    :param clip_grid: number of clipping ratios searched in ``(1 - max_shrink, 1]`` (default 10; 0 = no clipping).
    :param max_shrink: how far a group's range may shrink (default 0.2; the paper's 0.5 lowered each layer's
        output error further on the test model but raised its perplexity: clipping the largest weights costs
        more than the layer-wise error shows).
    :param max_tokens: calibration tokens kept per layer for the searches (default 4096: every k-th token of
        every batch, k doubling whenever more would be kept).

    Example::

        q = nnic.quantizer("awq", model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 128,
                                           "op_types": ["Linear"]}, {"exclude": True, "op_names": ["lm_head"]}],
                           calibration_data=batches)
        q.compress()
    """

    name = "awq"
    true_sequential = True

    def __init__(self, model: nn.Module, config_list: list[dict], *, calibration_data: Iterable[Any] | None = None,
                 blocks: str | Sequence[str] | None = None, calibration_steps: int | None = None,
                 progress: bool | None = None, grid: int = 20, clip_grid: int = 10, max_shrink: float = 0.2,
                 max_tokens: int = 4096) -> None:
        for key, value in (("grid", grid), ("clip_grid", clip_grid), ("max_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "clip_grid" else 1):
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        if not 0 < max_shrink < 1:
            raise ValueError(f"max_shrink: expected a float in (0, 1), got {max_shrink!r}")
        self.n_grid, self.clip_grid, self.max_shrink, self.max_tokens = grid, clip_grid, max_shrink, max_tokens
        super().__init__(model, config_list, calibration_data=calibration_data, blocks=blocks,
                         calibration_steps=calibration_steps, progress=progress)

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        st = self._stats.setdefault(name, {"abs_sum": 0, "tokens": 0, "rows": [], "stride": 1})
        st["abs_sum"] = st["abs_sum"] + x.abs().sum(0)
        st["tokens"] += x.shape[0]
        st["rows"].append(x[:: st["stride"]])
        if sum(r.shape[0] for r in st["rows"]) > self.max_tokens:  # keep every other row from now on
            st["rows"] = [torch.cat(st["rows"])[::2]]
            st["stride"] *= 2

    @staticmethod
    def _sample(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows)

    def quantize_group(self, names: list[str], modules: list[nn.Module]) -> None:
        stats = [self._stats.pop(n) for n in names]
        x = self._sample(stats[0]["rows"])
        weights = [L.weight_matrix(m).to(x.device) for m in modules]
        grids = [self.grid(n) for n in names]
        s = torch.ones(x.shape[1], device=x.device)
        if self.runner.can_fold(names, x.shape[1]):
            s = self._search_scale(x, stats[0]["abs_sum"] / stats[0]["tokens"], weights, grids)
            self.runner.fold_scale(names, s)
        for name, module, grid, w in zip(names, modules, grids, weights):
            ws = w * s
            clip = (_search_clip(grid, ws, x / s, self.clip_grid, self.max_shrink) if self.clip_grid
                    else torch.ones(1, device=w.device))
            scale, zero = grid.all_params(ws, clip)
            cols = w.shape[1]
            L.set_weight_matrix(module, grid.fake(ws, grid.expand(scale, cols), grid.expand(zero, cols)))
            self.state[name] = GroupQuant(grid, scale.cpu(), zero.cpu())

    def _search_scale(self, x: torch.Tensor, mean_abs: torch.Tensor, weights: list[torch.Tensor],
                      grids: list[GroupGrid]) -> torch.Tensor:
        """``mean|x|^alpha`` (normalised) for the ``alpha`` of the grid with the least output error on ``x``."""
        best, best_err = torch.ones_like(mean_abs), float("inf")
        for i in range(self.n_grid):
            s = mean_abs.pow(i / self.n_grid).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            err = sum(_output_error(x, g.fake_all(w * s) / s - w) for g, w in zip(grids, weights))
            if err < best_err:
                best, best_err = s, err
        return best


@nnic.hookimpl
def register_quantizers(register) -> None:
    register(AWQQuantizer)
