"""The VNNI path's tall tile (13 to 28 activation rows as one row panel, 16 columns per pass): the same exact
products as numpy and the same float bits as the portable path, at every row count around it and with column
counts that leave partial 16- and 32-column panels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnic import kernels as gemm

PATHS = gemm.gemm_paths()
#: The rows the tall tile takes (13-28) and its neighbours on either side (the 12-row tile, three row panels).
TALL_ROWS = st.integers(11, 30)
#: Partial and whole 16- and 32-column panels.
COLS = st.sampled_from([1, 15, 16, 17, 31, 32, 33, 48, 70, 96])
K_DIMS = st.sampled_from([1, 3, 4, 5, 64, 127, 509, 1031, 4099])


@pytest.mark.parametrize("path", PATHS)
@given(m=TALL_ROWS, k=K_DIMS, n=COLS, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_int8_matmul_is_exact_at_every_tall_row_count(path, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    np.testing.assert_array_equal(gemm.int8_matmul(a, b, path=path), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("path", PATHS)
def test_int8_matmul_extremes_at_the_tall_tile_s_largest_height(path):
    """28 rows and K = 4099 of the extreme products: every accumulator lane sums 4099 equal extreme terms."""
    for va, vb in [(-128, -128), (127, -128), (-128, 127)]:
        a = np.full((28, 4099), va, np.int8)
        b = np.full((4099, 50), vb, np.int8)
        np.testing.assert_array_equal(gemm.int8_matmul(a, b, path=path), np.full((28, 50), va * vb * 4099))


@pytest.mark.parametrize("path", PATHS)
@given(
    m=TALL_ROWS,
    k=K_DIMS,
    n=COLS,
    seed=st.integers(0, 2**32 - 1),
    symmetric=st.booleans(),
    zero_points=st.booleans(),
    bias=st.booleans(),
    activation=st.sampled_from([None, "relu", "gelu"]),
)
@settings(max_examples=60, deadline=None)
def test_int8_linear_gives_the_portable_path_s_bits(path, m, k, n, seed, symmetric, zero_points, bias, activation):
    """The tile finishes its accumulators in registers (zero-point terms, scales, bias, activation) in the order
    of the portable epilogue: the float results are bit-identical, not just close."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3.0).astype(np.float32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    zero = rng.integers(-20, 20, n).astype(np.int32) if zero_points else None
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    packed = gemm.pack_int8_weight(w, scale, zero)
    got = gemm.int8_linear(x, packed, b, symmetric=symmetric, activation=activation, path=path)
    want = gemm.int8_linear(x, packed, b, symmetric=symmetric, activation=activation, path="scalar")
    assert got.shape == (m, n)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("m", [12, 13, 16, 24, 28, 29])
def test_turning_the_tall_tile_off_changes_no_bit(m):
    """Off, 13 to 28 rows run as two or three row panels of the 12-row tile (the tiling before the tall tile):
    the exact products and the float results are the same either way, on every path."""
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, 1031)) * 2.0).astype(np.float32)
    w = rng.integers(-128, 128, (70, 1031), dtype=np.int8)
    packed = gemm.pack_int8_weight(w, rng.uniform(1e-3, 1e-1, 70).astype(np.float32))
    a = rng.integers(-128, 128, (m, 1031), dtype=np.int8)
    b = np.ascontiguousarray(w.T)

    def run(on: bool) -> list[np.ndarray]:
        gemm.set_gemm_tall_tile(on)
        try:
            return [gemm.int8_linear(x, packed, activation="gelu", path=p).view(np.int32) for p in PATHS] + [
                gemm.int8_matmul(a, b, path=p) for p in PATHS]
        finally:
            gemm.set_gemm_tall_tile(True)

    for tall, two in zip(run(True), run(False)):
        np.testing.assert_array_equal(tall, two)


def test_set_gemm_tall_tile_takes_a_bool():
    with pytest.raises(TypeError, match="on must be a bool, got int"):
        gemm.set_gemm_tall_tile(1)
