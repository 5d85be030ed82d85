"""Exact sparsity patterns from importance scores: per row, per layer, or N:M; ties keep the earlier weight.

``sparsity`` prunes exactly ``floor(sparsity * n)`` weights of each row (``scope="row"``, n = row length) or
of the whole ``[out, in]`` matrix (``scope="layer"``). N:M keeps the ``n`` highest scores of every ``m``
consecutive inputs of a row. Masks are bool, True keeps.
"""

from __future__ import annotations

import torch

from nnic.selection import amount

__all__ = ["SCOPES", "block_quota", "nm_keep", "prune_lowest"]

SCOPES = ("row", "layer")


def prune_lowest(scores: torch.Tensor, k: int, scope: str) -> torch.Tensor:
    """Keep-mask pruning the ``k`` lowest scores of each row (``"row"``) or of the matrix (``"layer"``)."""
    # a fresh contiguous mask: scores of a transposed weight (GPT-2's Conv1D) have transposed strides
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return keep
    if scope == "row":
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, idx, False)
    elif scope == "layer":
        idx = torch.argsort(scores.reshape(-1), stable=True)[:k]
        keep.view(-1)[idx] = False
    else:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    return keep


def block_quota(sparsity: float, rows: int, columns: int, start: int, stop: int, scope: str) -> int:
    """How many weights to prune in columns ``[start, stop)`` so that the layer ends exactly at ``sparsity``.

    Cumulative floors: per row ``floor(s * stop) - floor(s * start)``; per layer the same with ``rows * columns``
    scaled to the columns seen, so the blocks of a column-wise algorithm add up to the exact total.
    """
    if scope == "row":
        return amount(sparsity, stop) - amount(sparsity, start)
    total = amount(sparsity, rows * columns)

    def upto(c: int) -> int:
        return total * c // columns

    return upto(stop) - upto(start)


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input dimension ({cols}) to be a multiple of m={m}")
    groups = scores.reshape(-1, m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(rows, cols)
