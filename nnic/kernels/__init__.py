"""Fast CPU kernels for pruning and quantization (Rust, multithreaded, SIMD), for torch tensors and numpy arrays.

This package is the one door to the native module ``nnic._kernels`` and to its torch twins: nothing else in
nnic imports either. Its modules, one job each:

- :mod:`.runtime`: loads the native module once and applies ``NNIC_KERNEL_ISA``, ``NNIC_NUM_THREADS`` and
  ``NNIC_GEMM_BACKEND`` then; code paths and threads (:func:`set_isa`, :func:`set_num_threads`, ...).
- :mod:`.adapters`: torch <-> numpy, dtype/shape/contiguity/device/overlap checks shared by every kernel.
- :mod:`.select`: exact k-th smallest ``|x|``, keep-masks with exactly k pruned, in-place masking.
- :mod:`.quant`: affine (de)quantization, int4 nibble packing, abs-max / min-max reductions.
- :mod:`.gemm`: int8 / int4 GEMM: exact int8 products, prepacked linear and conv2d with fused epilogues.
- :mod:`.prefetch`: warming the next packed weights into the caches on an idle core while small ops run.
- :mod:`.sparse`: sparse Linear products (CSR from a bitmask, N:M; float32 or int8 values).
- :mod:`.encoder`: fused encoder ops: multi-head attention read in place from the projections, skip LayerNorm.
- :mod:`.decoder`: fused one-token decoder-step ops: RMSNorm, SiLU-gated product, attention over an in-place KV
  cache, and a whole LLaMA-style layer step (norms, attention, the four packed GEMMs) in one call.
- :mod:`.twins`: the torch implementations used for tensors on other devices (CUDA), same semantics.

Conventions shared by every function:

- Inputs are ``torch.Tensor`` or ``numpy.ndarray``; outputs have the kind of the (first) input: torch in,
  torch out (on the same device); numpy in, numpy out.
- CPU tensors are handed to Rust without a copy (``t.detach().numpy()``) when they are C-contiguous;
  non-contiguous inputs are copied to a contiguous buffer first. In-place kernels (``apply_mask_``,
  ``prune_by_threshold_``) also accept non-contiguous tensors and views: they work on a contiguous copy and
  write it back. Autograd is bypassed (the data is changed in place like ``w.data``).
- Tensors on other devices (CUDA) run the torch twins (:mod:`.twins`) with the same semantics.
- Float kernels take float32 only; float16/bfloat16/float64 raise ``TypeError`` (convert with ``.float()``
  or ``.astype(np.float32)``).
- Bad input raises ``ValueError`` or ``TypeError`` naming the argument, what was expected and what was given;
  NaN inputs raise ``ValueError`` naming the flat (C-order) index of the first NaN. A caller-given ``out=``
  that overlaps the input in memory is refused (the kernels would read values they already overwrote).
- The GIL is released while a Rust kernel runs; kernels use their own thread pool (:func:`set_num_threads`).
"""

from __future__ import annotations

from nnic.kernels import twins
from nnic.kernels.decoder import add_rms_norm, decode_attention, decode_layer, rms_norm, silu_mul
from nnic.kernels.encoder import (
    attention,
    bf16_products_run,
    embed_layer_norm,
    encoder_layer,
    encoder_layers,
    linear_skip_layer_norm,
    skip_layer_norm,
)
from nnic.kernels.gemm import (
    ACTIVATIONS,
    ACT_MODES,
    DEFAULT_INT4_SCALE_DTYPE,
    INT4_SCALE_DTYPES,
    MAX_K,
    PackedInt4Weight,
    PackedInt8Weight,
    check_int4_scale_dtype,
    int4_group_scales,
    int4_linear,
    int4_scale_codes,
    int8_conv2d,
    int8_linear,
    int8_matmul,
    pack_int4_weight,
    pack_int8_weight,
    quantize_int4_weight,
    quantize_int4_weight_scale_codes,
    quantize_int8_weight,
    run_packed_linear,
)
from nnic.kernels.prefetch import cancel_prefetch, prefetch_stats, prefetch_wait, prefetch_weights
from nnic.kernels.quant import abs_max, dequantize, min_max, pack_int4, quantize, unpack_int4
from nnic.kernels.runtime import (
    active_isa,
    cpu_features,
    gemm_backend,
    gemm_openmp_stats,
    gemm_path,
    gemm_paths,
    gemm_pool_stats,
    gemm_route_stats,
    gemm_spin_us,
    gemm_team_stats,
    gemm_vnni_peak_gops,
    get_num_threads,
    set_gemm_backend,
    set_gemm_column_lanes,
    set_gemm_routing,
    set_gemm_spin_us,
    set_gemm_spread,
    set_gemm_tail_pieces,
    set_gemm_tall_tile,
    set_isa,
    set_num_threads,
    supported_isas,
)
from nnic.kernels.sparse import (
    SPARSE_ACT_MODES,
    SparseWeight,
    flush_caches,
    set_sparse_bitmask_break_even,
    sparse_bitmask_break_even,
    sparse_linear,
    sparse_weight_csr,
    sparse_weight_nm,
)
from nnic.kernels.select import (
    apply_mask_,
    global_kth_smallest_abs,
    global_smallest_abs_masks,
    kth_smallest_abs,
    prune_by_threshold_,
    smallest_abs_mask,
)

__all__ = [
    "ACTIVATIONS", "ACT_MODES", "DEFAULT_INT4_SCALE_DTYPE", "INT4_SCALE_DTYPES", "MAX_K", "PackedInt4Weight",
    "PackedInt8Weight", "SPARSE_ACT_MODES", "SparseWeight", "abs_max", "active_isa", "add_rms_norm", "apply_mask_",
    "attention", "bf16_products_run", "cancel_prefetch", "check_int4_scale_dtype", "cpu_features", "decode_attention",
    "decode_layer", "dequantize", "embed_layer_norm", "encoder_layer", "encoder_layers",
    "flush_caches", "gemm_backend", "gemm_openmp_stats", "gemm_path", "gemm_paths", "gemm_pool_stats",
    "gemm_route_stats", "gemm_spin_us", "gemm_team_stats", "gemm_vnni_peak_gops", "get_num_threads",
    "global_kth_smallest_abs",
    "global_smallest_abs_masks", "int4_group_scales", "int4_linear", "int4_scale_codes", "int8_conv2d", "int8_linear",
    "int8_matmul",
    "kth_smallest_abs", "linear_skip_layer_norm", "min_max", "pack_int4", "pack_int4_weight", "pack_int8_weight",
    "prefetch_stats",
    "prefetch_wait", "prefetch_weights", "prune_by_threshold_", "quantize", "quantize_int4_weight",
    "quantize_int4_weight_scale_codes", "quantize_int8_weight", "rms_norm", "run_packed_linear", "set_gemm_backend",
    "set_gemm_column_lanes", "set_gemm_routing", "set_gemm_spin_us", "set_gemm_spread",
    "set_gemm_tail_pieces",
    "set_gemm_tall_tile", "set_isa", "set_num_threads", "set_sparse_bitmask_break_even", "silu_mul",
    "skip_layer_norm", "smallest_abs_mask", "sparse_bitmask_break_even", "sparse_linear", "sparse_weight_csr",
    "sparse_weight_nm", "supported_isas", "twins", "unpack_int4",
]
