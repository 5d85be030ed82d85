"""Spreading: when another thread of a parallel run has shared the caller's CPU for 2 ms, the caller moves to another
CPU of its affinity mask and gives the mask back as it was. Where the threads run changes no result, and the process's
affinity is the same after the runs as before."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nnic import kernels as gemm


@pytest.mark.parametrize("backend", ["openmp", "rayon"])
def test_spreading_changes_no_bit_and_leaves_the_affinity_as_it_was(backend):
    rng = np.random.default_rng(3)
    m, k, n = 700, 900, 1100
    x = (rng.standard_normal((m, k)) * 2.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-1, n).astype(np.float32))
    before_mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    before_backend, before_threads = gemm.gemm_backend(), gemm.get_num_threads()
    results = {}
    try:
        gemm.set_gemm_backend(backend)
        gemm.set_num_threads(2)
        for on in (True, False):
            gemm.set_gemm_spread(on)
            results[on] = gemm.int8_linear(x, packed, activation="gelu")
    finally:
        gemm.set_gemm_spread(True)
        gemm.set_gemm_backend(before_backend)
        gemm.set_num_threads(before_threads)
    np.testing.assert_array_equal(results[True].view(np.int32), results[False].view(np.int32))
    if before_mask is not None:
        assert os.sched_getaffinity(0) == before_mask


def test_the_run_counters_name_the_callers_moves_and_a_reset_zeroes_them():
    keys = {"runs", "late", "windows", "tasks", "tasks_by_team", "arrival_ns", "tail_ns", "region_ns", "wait_ns", "moves"}
    for read in (gemm.gemm_openmp_stats, gemm.gemm_pool_stats):
        assert set(read()) == keys
        read(reset=True)
        assert read()["moves"] == 0


def test_set_gemm_spread_takes_a_bool():
    with pytest.raises(TypeError, match="on must be a bool, got int"):
        gemm.set_gemm_spread(1)
