"""Tail pieces: a product planned as output blocks (more rows than one block, or K beyond one slice) runs its last two
blocks per thread as single 32-column panels, so that the threads still on their cores take them while another is
descheduled. Whichever thread ends up with a panel, and on whichever backend, the results are numpy's exact products
and the same bits as with every block one task: the exact products, the float results with their activation, and
the fused LayerNorm ending, which the thread that finishes a row block's last piece runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemm_threads import on_threads
from nnic import kernels as gemm

PATHS = gemm.gemm_paths()


def with_pieces(on: bool, f):
    gemm.set_gemm_tail_pieces(on)
    try:
        return f()
    finally:
        gemm.set_gemm_tail_pieces(True)


@pytest.mark.parametrize("backend", ["openmp", "rayon"])
@given(m=st.sampled_from([25, 193, 200, 300, 777]), k=st.sampled_from([1, 64, 1031, 4099]),
       n=st.sampled_from([1, 33, 200, 520, 1000]), threads=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_int8_matmul_is_exact_with_the_tail_in_pieces(backend, m, k, n, threads, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    got = on_threads(threads, backend, lambda: gemm.int8_matmul(a, b))
    # float64 products and sums are exact here (|sum| <= 128 * 128 * 4099 < 2**53), and BLAS makes them fast.
    np.testing.assert_array_equal(got, (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64))


@pytest.mark.parametrize("backend", ["openmp", "rayon"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("m", "k"), [(200, 260), (300, 4099), (777, 64), (24, 260)])
def test_turning_the_tail_pieces_off_changes_no_bit(backend, threads, m, k):
    """Off, every planned block is one task (the scheduling before the pieces)."""
    rng = np.random.default_rng(m + k)
    n = 1000
    x = (rng.standard_normal((m, k)) * 2.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-1, n).astype(np.float32))
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = np.ascontiguousarray(w.T)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)

    def run(on: bool) -> list[np.ndarray]:
        return with_pieces(on, lambda: on_threads(threads, backend, lambda: [
            *(gemm.int8_linear(x, packed, activation="gelu", path=p).view(np.int32) for p in PATHS),
            *(gemm.int8_matmul(a, b, path=p) for p in PATHS),
            np.asarray(gemm.linear_skip_layer_norm(x, packed, residual, gamma, beta)).view(np.int32)]))

    for pieces, blocks in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(pieces, blocks)


def test_the_skip_layer_norm_ending_on_two_threads_matches_one_thread_with_whole_blocks():
    """The fused LayerNorm ending runs once per row block, after its last piece: on two threads, with the tail in
    pieces, the result has the bits of one thread running every block whole."""
    rng = np.random.default_rng(7)
    m, k, n = 400, 300, 900
    x = (rng.standard_normal((m, k)) * 2.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-1, n).astype(np.float32))
    residual = rng.standard_normal((m, n)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    got = on_threads(2, "rayon", lambda: np.asarray(gemm.linear_skip_layer_norm(x, packed, residual, gamma, beta)))
    want = on_threads(1, "rayon", lambda: with_pieces(False, lambda: np.asarray(
        gemm.linear_skip_layer_norm(x, packed, residual, gamma, beta))))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def test_set_gemm_tail_pieces_takes_a_bool():
    with pytest.raises(TypeError, match="on must be a bool, got int"):
        gemm.set_gemm_tail_pieces(1)
