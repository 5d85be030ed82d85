"""nnic.kernels as candidates for the shared baseline harness, timed beside its baselines in one run.

    python /work/shared/bench/baseline.py --plugin bench/baseline_plugin.py --quick --sections select,mask,quant

Inputs are contiguous torch CPU tensors; every candidate returns what the harness checks against its baseline.
"""

from __future__ import annotations

from nnic import kernels


def set_num_threads(n: int) -> None:  # called by the harness whenever it switches thread count
    kernels.set_num_threads(n)


def select(w, k):
    return kernels.kth_smallest_abs(w, k)


def select_global(ws, k):
    return kernels.global_kth_smallest_abs(ws, k)


def mask_apply(w, keep):
    kernels.apply_mask_(w, keep)


def prune_fused(w, t):
    kernels.prune_by_threshold_(w, t)


def quant_per_tensor(w, scale):
    return kernels.quantize(w, scale)


def quant_per_channel(w, scales):
    return kernels.quantize(w, scales, axis=0)


def dequant_per_tensor(q, scale):
    return kernels.dequantize(q, scale)


def dequant_per_channel(q, scales):
    return kernels.dequantize(q, scales, axis=0)


CANDIDATES = {
    "select": {"kth_smallest_abs": select},
    "select_global": {"global_kth_smallest_abs": select_global},
    "mask_apply": {"apply_mask_": mask_apply},
    "prune_fused": {"prune_by_threshold_": prune_fused},
    "quant_per_tensor": {"quantize": quant_per_tensor},
    "quant_per_channel": {"quantize(axis=0)": quant_per_channel},
    "dequant_per_tensor": {"dequantize": dequant_per_tensor},
    "dequant_per_channel": {"dequantize(axis=0)": dequant_per_channel},
}
