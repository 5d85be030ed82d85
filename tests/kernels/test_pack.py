"""int4 packing against the numpy reference (exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

int4_arrays = hnp.arrays(np.int8, nst.shapes(max_side=12), elements=st.integers(-8, 7))


@settings(deadline=None)
@given(int4_arrays)
def test_pack_unpack_roundtrip(q):
    p = kernels.pack_int4(q)
    assert p.dtype == np.uint8 and p.shape == ((q.size + 1) // 2,)
    assert_array_equal(p, ref.pack_int4(q))
    assert_array_equal(kernels.unpack_int4(p, q.size), q.reshape(-1))


@settings(deadline=None)
@given(hnp.arrays(np.uint8, st.integers(0, 40)), st.booleans())
def test_unpack_any_bytes(p, odd):
    n = max(2 * p.size - odd, 0)
    assert_array_equal(kernels.unpack_int4(p, n), ref.unpack_int4(p, n))


def test_layout_torch_and_large():
    p = kernels.pack_int4(torch.tensor([-1, 2, 7], dtype=torch.int8))
    assert isinstance(p, torch.Tensor) and p.tolist() == [0x2F, 0x07]
    assert kernels.unpack_int4(p, 3).tolist() == [-1, 2, 7]
    q = np.random.default_rng(0).integers(-8, 8, 200_001).astype(np.int8)
    assert_array_equal(kernels.unpack_int4(kernels.pack_int4(q), q.size), q)
    assert_array_equal(kernels.pack_int4(q.reshape(-1, 3)[:, ::2]), ref.pack_int4(q.reshape(-1, 3)[:, ::2]))


def test_pack_errors():
    with pytest.raises(ValueError, match=r"q values must be in \[-8, 7\], got 8 at flat index 3"):
        kernels.pack_int4(np.array([[0, 1], [2, 8]], np.int8))
    with pytest.raises(TypeError, match="q must have dtype int8, got int32"):
        kernels.pack_int4(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="n = 5 int4 values need 3 packed bytes, p has 2"):
        kernels.unpack_int4(np.zeros(2, np.uint8), 5)
    with pytest.raises(ValueError, match="n = -1"):
        kernels.unpack_int4(np.zeros(0, np.uint8), -1)
    with pytest.raises(TypeError, match="p must have dtype uint8, got int8"):
        kernels.unpack_int4(np.zeros(2, np.int8), 4)
