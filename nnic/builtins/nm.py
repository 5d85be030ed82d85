"""N:M semi-structured pruner: exactly N non-zeros in every M consecutive weights along the input dimension.

2:4 is the pattern sparse tensor cores run at twice the dense speed. The input dimension is dim 1 of a
``Linear``/``Conv``/``Embedding`` weight (dim 0 of a ``ConvTranspose`` weight); for a convolution the groups
run over input channels at each kernel position (the NVIDIA ASP layout), so the group of M is M consecutive
input channels. In each group the N weights of largest magnitude are kept; ties keep the earlier position.
"""

from __future__ import annotations

import torch
from torch import nn

import nnic
from nnic.config import int_key
from nnic.selection import select_layers
from nnic.masking import Masks, parameter, prunable_parameters
from nnic.pruning.base import Pruner

__all__ = ["NMPruner", "check_nm", "input_dim", "nm_mask", "nm_violations"]


def input_dim(module: nn.Module) -> int:
    """The weight dimension that holds the inputs: 0 for transposed convolutions, 1 otherwise."""
    return 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1


def _groups(t: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """``t`` as ``[-1, m]`` rows, each row M consecutive entries along ``dim``."""
    if t.dim() < 2:
        raise ValueError(f"N:M sparsity needs a tensor of at least 2 dimensions, got shape {tuple(t.shape)}")
    size = t.shape[dim]
    if size % m:
        raise ValueError(f"N:M sparsity needs the input dimension (dim {dim}, size {size}) to be a multiple "
                         f"of m={m}")
    return t.movedim(dim, -1).reshape(-1, m)


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = 1) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest-magnitude weights of every ``m`` consecutive ones along ``dim``."""
    if not 0 <= n <= m:
        raise ValueError(f"N:M sparsity needs 0 <= n <= m, got n={n}, m={m}")
    w = weight.detach()
    if bool(torch.isnan(w).any()):
        raise ValueError("the weight contains NaN")
    groups = _groups(w.abs().float(), m, dim)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    moved = list(w.movedim(dim, -1).shape)
    return keep.reshape(moved).movedim(-1, dim).contiguous()


def nm_violations(tensor: torch.Tensor, n: int, m: int, dim: int = 1) -> int:
    """How many groups of ``m`` consecutive entries along ``dim`` break the N:M pattern.

    A bool tensor is a mask and must keep *exactly* ``n`` per group; any other tensor (a pruned weight) may
    have *at most* ``n`` non-zeros per group, because a kept weight can be zero.
    """
    counts = (_groups(tensor.detach(), m, dim) != 0).sum(dim=1)
    bad = counts != n if tensor.dtype == torch.bool else counts > n
    return int(bad.sum())


def check_nm(tensor: torch.Tensor, n: int, m: int, dim: int = 1) -> bool:
    """True when ``tensor`` (a bool mask, or a pruned weight) follows the N:M pattern; see :func:`nm_violations`."""
    return nm_violations(tensor, n, m, dim) == 0


class NMPruner(Pruner):
    """Keep the N largest of every M consecutive weights along the input dimension (2:4 by default).

    Config keys: ``n``, ``m`` per entry (defaults from the ``n=2, m=4`` constructor arguments); ``sparsity`` is
    not used: each layer ends at sparsity exactly ``1 - n/m``. The input dimension must be a multiple of M
    (exclude layers where it is not, e.g. a first convolution with one input channel). Biases are kept.

    Example::

        model, masks = nnic.pruner("nm", model, [{"op_types": ["Linear"], "n": 2, "m": 4}]).compress()
        assert nnic.builtins.nm.check_nm(masks["fc"]["weight"], 2, 4)
    """

    name = "nm"
    aliases = ("n:m", "semi_structured")
    config_keys = (int_key("n", lo=0), int_key("m", lo=1))

    def __init__(self, model: nn.Module, config_list: list[dict], *, n: int = 2, m: int = 4) -> None:
        # Not Compressor.__init__: N:M entries carry no 'sparsity', so selection must not require one.
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model, self.config_list, self.masks = model, config_list, {}
        self.layers = select_layers(model, config_list, self.kind, extra_keys=self.config_keys,
                                    require_sparsity=False)
        self.pattern: dict[str, tuple[int, int]] = {}
        for layer, cfg in self.layers.items():
            where = f"config_list[{cfg.entry_index}]"
            for key in ("sparsity", "total_sparsity"):
                if key in cfg.config:
                    raise ValueError(f"{where}[{key!r}]: the N:M pruner's sparsity is 1 - n/m; give 'n' and 'm' "
                                     f"instead")
            ln, lm = cfg.config.get("n", n), cfg.config.get("m", m)
            if not 0 <= ln <= lm:
                raise ValueError(f"{where}: expected 0 <= n <= m, got n={ln}, m={lm}")
            self.pattern[layer] = (ln, lm)

    def calculate_masks(self) -> Masks:
        masks: Masks = {}
        for layer, cfg in self.layers.items():
            n, m = self.pattern[layer]
            masks[layer] = {}
            for pname in prunable_parameters(cfg.module):
                bias = pname.removesuffix("weight") + "bias"
                if isinstance(getattr(cfg.module, bias, None), torch.Tensor):
                    masks[layer][bias] = None
                try:
                    masks[layer][pname] = nm_mask(parameter(cfg.module, pname), n, m, input_dim(cfg.module))
                except ValueError as exc:
                    raise ValueError(f"{layer}.{pname}: {exc}; exclude this layer from the config_list") from exc
        return masks


@nnic.hookimpl
def register_pruners(register) -> None:
    register(NMPruner)
