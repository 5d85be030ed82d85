"""Column lanes: a product whose rows form one row block (the VNNI path: 29 to 192 rows, K within one slice, at two
threads 897 or more outputs) runs as one contiguous range of weight panels per thread, halved by a thread whose range
has run out. Whatever thread ends up with a panel, the results are numpy's exact products and the same bits as the
column blocks before the lanes, on every path, on one thread and on several, on torch's OpenMP team and on nnic's own
helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemm_threads import on_threads
from nnic import kernels as gemm

PATHS = gemm.gemm_paths()
#: Around the lanes' row range: two row panels (streamed, no lanes), the first and last single row block, two blocks.
LANE_ROWS = st.sampled_from([24, 25, 29, 40, 97, 128, 150, 192, 193, 200])
#: Partial and whole 32-column panels; few columns (the plan splits the rows instead: no lanes) and enough for lanes
#: at 2 threads (897 and more) and at 3 (1409 and more).
COLS = st.sampled_from([1, 33, 200, 520, 1000, 1505])
#: One slice, exactly the slice (4096), and beyond it (K slices: no lanes).
K_DIMS = st.sampled_from([1, 5, 64, 1031, 4096, 4099])


@pytest.mark.parametrize("backend", ["openmp", "rayon"])
@given(m=LANE_ROWS, k=K_DIMS, n=COLS, threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_int8_matmul_is_exact_on_any_thread_count(backend, m, k, n, threads, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    got = on_threads(threads, backend, lambda: gemm.int8_matmul(a, b))
    # float64 products and sums are exact here (|sum| <= 128 * 128 * 4099 < 2**53), and BLAS makes them fast.
    np.testing.assert_array_equal(got, (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64))


@pytest.mark.parametrize("path", PATHS)
@given(m=LANE_ROWS, k=st.sampled_from([1, 5, 64, 1031]), n=COLS, seed=st.integers(0, 2**32 - 1),
       zero_points=st.booleans(), activation=st.sampled_from([None, "gelu"]))
@settings(max_examples=20, deadline=None)
def test_int8_linear_on_two_threads_gives_the_portable_path_s_bits(path, m, k, n, seed, zero_points, activation):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    zero = rng.integers(-20, 20, n).astype(np.int32) if zero_points else None
    bias = rng.standard_normal(n).astype(np.float32)
    packed = gemm.pack_int8_weight(w, scale, zero)
    got = on_threads(2, "rayon", lambda: gemm.int8_linear(x, packed, bias, activation=activation, path=path))
    want = on_threads(1, "rayon", lambda: gemm.int8_linear(x, packed, bias, activation=activation, path="scalar"))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [24, 29, 128, 192, 193])
def test_turning_the_lanes_off_changes_no_bit(m, threads):
    """Off, the row block runs as the planned column blocks (the scheduling before the lanes): the exact products,
    the float results and the fused LayerNorm ending (which the thread of the last panel runs) are the same."""
    rng = np.random.default_rng(m)
    k, n = 260, 1000  # 1000 columns: one row block of 128 rows runs on lanes at 2 threads too
    x = (rng.standard_normal((m, k)) * 2.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-1, n).astype(np.float32))
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = np.ascontiguousarray(w.T)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)

    def run(on: bool) -> list[np.ndarray]:
        gemm.set_gemm_column_lanes(on)
        try:
            return on_threads(threads, "rayon", lambda: [
                *(gemm.int8_linear(x, packed, activation="gelu", path=p).view(np.int32) for p in PATHS),
                *(gemm.int8_matmul(a, b, path=p) for p in PATHS),
                np.asarray(gemm.linear_skip_layer_norm(x, packed, residual, gamma, beta)).view(np.int32)])
        finally:
            gemm.set_gemm_column_lanes(True)

    for lanes, blocks in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(lanes, blocks)


def test_set_gemm_column_lanes_takes_a_bool():
    with pytest.raises(TypeError, match="on must be a bool, got int"):
        gemm.set_gemm_column_lanes(1)
