"""Sparse execution of fine-grained (Level, N:M) sparsity on CPU: layouts, kernels, modules and the decision step.

- :func:`sparsify`: turns mostly-zero Linear / Int8Linear (Conv2d) layers into :class:`SparseLinear`
  (:class:`SparseConv2d`) where a measured
  micro-benchmark shows a gain (see :mod:`nnic.sparse.sparsify`);
- :class:`SparseConv2d`: a ``Conv2d`` (``groups == 1``) as the same sparse matmul on its patches (im2col; a 1x1
  convolution's pixels), its weight in a ``SparseLinear``;
- :class:`SparseLinear`: stores bitmask/N:M + values (float32 or int8), computes with the Rust kernels on CPU and
  torch sparse ops on CUDA, saves with ``nnic.speedup.save_pruned`` at a size that follows the density;
- :mod:`nnic.sparse.layout`: the storage forms and :func:`~nnic.sparse.layout.pack_sparse_weight`; the kernels
  are in :mod:`nnic.kernels.sparse` (``nnic.kernels.sparse_linear``...).
"""

from nnic.sparse.conv import SparseConv2d
from nnic.sparse.modules import SparseLinear
from nnic.sparse.sparsify import LayerDecision, SparsifyReport, sparsify

__all__ = ["LayerDecision", "SparseConv2d", "SparseLinear", "SparsifyReport", "sparsify"]
