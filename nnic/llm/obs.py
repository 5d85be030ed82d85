"""Optimal-brain-surgeon weight updates, column by column with lazy batched updates: SparseGPT and GPTQ.

Both walk the columns of ``W [out, in]`` in blocks. In a block each column is pruned (SparseGPT) or quantized
(GPTQ), and its error, scaled by the inverse Hessian's Cholesky factor ``U``, is spread over the columns not
yet processed, so that the layer's output on the calibration inputs changes as little as possible
(Frantar & Alistarh 2022, 2023). The updates to later blocks are applied once per block (one matmul).
"""

from __future__ import annotations

import torch

from nnic.llm.groupquant import GroupGrid
from nnic.llm.hessian import damped_inverse_cholesky
from nnic.llm.patterns import block_quota, nm_keep, prune_lowest

__all__ = ["gptq_quantize", "sparsegpt_prune"]


def _blocks(columns: int, block_size: int):
    for i1 in range(0, columns, block_size):
        yield i1, min(i1 + block_size, columns)


def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, *, sparsity: float = 0.5, n: int | None = None,
                    m: int | None = None, scope: str = "row", damp: float = 0.01,
                    block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: the pruned and updated ``[out, in]`` weight, and its keep-mask.

    The mask of each block of columns is chosen by the OBS saliency ``w^2 / [H^-1]_jj^2`` (adaptive mask
    selection), N:M per group of ``m`` columns, or ``sparsity`` with exact counts per row / per layer.
    """
    w = w.detach().float().clone()
    rows, cols = w.shape
    u, dead = damped_inverse_cholesky(h, damp)
    w[:, dead] = 0
    if n is not None:
        block_size = max(m, block_size // m * m)
    keep = torch.ones_like(w, dtype=torch.bool)
    for i1, i2 in _blocks(cols, block_size):
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        d = torch.diagonal(u1)
        saliency = w1.pow(2) / d.pow(2).unsqueeze(0)
        if n is None:
            keep1 = prune_lowest(saliency, block_quota(sparsity, rows, cols, i1, i2, scope), scope)
        else:
            keep1 = nm_keep(saliency, n, m)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = col * keep1[:, i]
            err = (col - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        keep[:, i1:i2] = keep1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w * keep, keep


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, grid: GroupGrid, *, act_order: bool = True,
                  damp: float = 0.01, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ: the dequantized ``[out, in]`` weight and its ``[out, groups]`` scales and zero points.

    Groups are ``grid.group_size`` consecutive input columns in the weight's own order, so the result runs on
    an ordinary group-wise kernel. Without ``act_order`` each group's range is taken from the weights as
    updated when the walk reaches the group (the original GPTQ); with ``act_order`` the columns are walked in
    decreasing order of ``H_jj`` and the group ranges are fixed beforehand from the original weights ("static
    groups"), because a walk in that order visits a group's columns far apart.
    """
    w = w.detach().float().clone()
    rows, cols = w.shape
    g = grid.size(cols)
    if cols % g:
        raise ValueError(f"group_size {g} does not divide the input dimension {cols}")
    diag = torch.diagonal(h).clone()
    w[:, diag == 0] = 0
    scales = torch.zeros(rows, cols // g, device=w.device)
    zeros = torch.zeros(rows, cols // g, dtype=torch.int32, device=w.device)
    if act_order:
        scales, zeros = grid.all_params(w)
        perm = torch.argsort(diag, descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    else:
        perm = torch.arange(cols, device=w.device)
        block_size = max(g, block_size // g * g) if g <= block_size else g
    u, _ = damped_inverse_cholesky(h, damp)
    q_all = torch.zeros_like(w)
    for i1, i2 in _blocks(cols, block_size):
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        for i in range(i2 - i1):
            col_index = int(perm[i1 + i])
            group = col_index // g
            if not act_order and col_index % g == 0:
                s, z = grid.params(w1[:, i:i + g])
                scales[:, group], zeros[:, group] = s, z
            col = w1[:, i]
            q = grid.fake(col, scales[:, group], zeros[:, group])
            err = (col - q) / u1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            q1[:, i], err1[:, i] = q, err
        q_all[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    if act_order:
        q_all = q_all[:, torch.argsort(perm)]
    return q_all, scales, zeros
