"""Sparse layouts of a ``[out, in]`` weight, as torch tensors (any device): the bitmask form and the N:M form.

- Bitmask (unstructured): ``bits[out, ceil(in / 8)]`` uint8, bit ``c % 8`` of byte ``c // 8`` set when column
  ``c`` is stored (``numpy.packbits(..., bitorder="little")``), and the stored values in row-major order. This is
  what files hold: ``in / 8`` bytes per row whatever the density, plus the values, so a 90 %-sparse float32
  layer takes 13 % of its dense size (3.1 % bitmask + 10 % values) and an int8 one 5.6 %.
- N:M: every group of ``m`` consecutive inputs stores ``n`` slots (a group with fewer non-zeros pads with zero
  values), ``values[out, in / m * n]`` and the slots' positions in their group as 4-bit indices, two per byte,
  low nibble first: ``index[out, ceil(in / m * n / 2)]`` (``m <= 16``). 2:4 float32 takes 56 % of dense.
"""

from __future__ import annotations

import torch

#: Largest N:M group (4-bit in-group indices) and largest ``in_features`` (u16 column indices in the kernels).
MAX_M = 16
MAX_IN_FEATURES = 1 << 16
#: N:M patterns tried by :func:`nm_pattern`, most compact first.
NM_PATTERNS = ((1, 4), (1, 2), (2, 8), (2, 4), (4, 8), (8, 16))

_BIT = 1 << torch.arange(8, dtype=torch.int32)


def _check_2d(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out_features, in_features], got shape {tuple(t.shape)}")


def pack_bitmask(keep: torch.Tensor) -> torch.Tensor:
    """The uint8 bitmask ``[out, ceil(in / 8)]`` of a bool ``keep[out, in]``."""
    _check_2d(keep, "keep")
    n, k = keep.shape
    pad = -k % 8
    padded = torch.nn.functional.pad(keep.to(torch.int32), (0, pad)).reshape(n, (k + pad) // 8, 8)
    return (padded * _BIT.to(keep.device)).sum(-1).to(torch.uint8)


def unpack_bitmask(bits: torch.Tensor, in_features: int) -> torch.Tensor:
    """The bool ``keep[out, in_features]`` of a bitmask."""
    _check_2d(bits, "bits")
    expanded = (bits.to(torch.int32)[..., None] & _BIT.to(bits.device)) != 0
    return expanded.reshape(bits.shape[0], bits.shape[1] * 8)[:, :in_features]


def nm_pattern(nonzero: torch.Tensor, patterns=NM_PATTERNS, max_padding: float = 0.25) -> tuple[int, int] | None:
    """The most compact ``(n, m)`` of ``patterns`` such that every group of ``m`` consecutive entries of each row
    of the bool ``nonzero[out, in]`` holds at most ``n`` True values, and the N:M slots exceed the non-zeros by
    at most ``max_padding`` (so an unstructured 90 % layer is not called 8:16); None when none fits."""
    _check_2d(nonzero, "nonzero")
    k = nonzero.shape[1]
    nnz = int(nonzero.sum())
    for n, m in sorted(patterns, key=lambda p: p[0] / p[1]):
        if nonzero.numel() * n / m > (1 + max_padding) * nnz:
            continue
        if k % m == 0 and k > 0 and nonzero.numel() and int(nonzero.reshape(nonzero.shape[0], k // m, m).sum(-1).max()) <= n:
            return n, m
    return None


def pack_nm(weight: torch.Tensor, keep: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values[out * L], index[out, ceil(L / 2)])`` of ``weight`` where ``keep``, ``L = in / m * n``.

    Each group's kept positions come first, in ascending order, then unkept ones (zero values) as padding.
    Raises ``ValueError`` when a group keeps more than ``n``."""
    _check_2d(weight, "weight")
    if keep.shape != weight.shape:
        raise ValueError(f"keep has shape {tuple(keep.shape)}, the weight {tuple(weight.shape)}")
    if not (1 <= n <= m <= MAX_M):
        raise ValueError(f"N:M needs 1 <= n <= m <= {MAX_M}, got n={n}, m={m}")
    rows, k = weight.shape
    if k % m:
        raise ValueError(f"N:M needs in_features ({k}) to be a multiple of m={m}")
    groups = keep.reshape(rows, k // m, m)
    worst = int(groups.sum(-1).max()) if groups.numel() else 0
    if worst > n:
        raise ValueError(f"the weight keeps {worst} entries in a group of {m}: not {n}:{m} sparse")
    order_key = (~groups).to(torch.int32) * m + torch.arange(m, device=keep.device, dtype=torch.int32)
    pos = order_key.argsort(-1)[..., :n]                                    # [rows, G, n]
    vals = torch.gather((weight * keep).reshape(rows, k // m, m), 2, pos).reshape(rows, k // m * n)
    nib = pos.reshape(rows, k // m * n).to(torch.uint8)
    if nib.shape[1] % 2:
        nib = torch.nn.functional.pad(nib, (0, 1))
    index = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return vals.reshape(-1).contiguous(), index.contiguous()


def unpack_nm(values: torch.Tensor, index: torch.Tensor, in_features: int, n: int, m: int) -> torch.Tensor:
    """The dense ``[out, in_features]`` weight of an N:M layout (padding slots add zero)."""
    rows = index.shape[0]
    length = in_features // m * n
    nib = torch.stack([index & 0x0F, index >> 4], -1).reshape(rows, index.shape[1] * 2)[:, :length].long()
    cols = (torch.arange(length, device=index.device) // n * m)[None, :] + nib
    dense = torch.zeros(rows, in_features, dtype=values.dtype, device=values.device)
    return dense.scatter_add_(1, cols, values.reshape(rows, length))


def pack_sparse_weight(weight: torch.Tensor, keep: torch.Tensor | None = None, *, nm: tuple[int, int] | None = None,
                       scale=None):
    """The kernels' :class:`~nnic.kernels.SparseWeight` of ``weight[out, in]`` (float32, or int8 codes with
    ``scale``: one float per output row) where ``keep`` (default: ``weight != 0``): CSR, or N:M with ``nm=(n, m)``."""
    from nnic import kernels

    _check_2d(weight, "weight")
    if weight.dtype not in (torch.float32, torch.int8):
        raise TypeError(f"weight must be float32 (or int8 codes with scale), got {weight.dtype}")
    keep = weight != 0 if keep is None else keep
    if keep.shape != weight.shape:
        raise ValueError(f"keep has shape {tuple(keep.shape)}, expected the weight's {tuple(weight.shape)}")
    keep = keep.to(device=weight.device, dtype=torch.bool)
    if weight.shape[1] > MAX_IN_FEATURES:
        raise ValueError(f"in_features = {weight.shape[1]} is too large for the sparse kernels (at most "
                         f"{MAX_IN_FEATURES})")
    if nm is None:
        return kernels.sparse_weight_csr(pack_bitmask(keep), weight.shape[1], weight[keep].contiguous(), scale)
    values, index = pack_nm(weight, keep, *nm)
    return kernels.sparse_weight_nm(index, weight.shape[1], nm[0], nm[1], values, scale)
