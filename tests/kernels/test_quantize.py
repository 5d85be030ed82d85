"""quantize / dequantize against the numpy reference: exact integer equality, exact float32 dequantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BIG = settings(SETTINGS, max_examples=4)
DEQUANT_ULPS = 0  # dequantize is one int->float conversion and one float32 product: exact


def as_kind(a, kind):
    return torch.from_numpy(np.array(a, copy=True)) if kind == "torch" else np.array(a, copy=True)


def to_np(a):
    return a.numpy() if isinstance(a, torch.Tensor) else a


@st.composite
def quant_case(draw, arrays=None):
    """(x, scale, zero_point, axis, bits, signed) with valid parameters."""
    x, axis = draw(nst.with_axis(nst.float32_arrays() if arrays is None else arrays))
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    qmin, qmax = ref.qrange(bits, signed)
    n = 1 if axis is None else x.shape[axis]
    scales = st.one_of(st.floats(2.0**-10, 2.0**10, width=32), st.sampled_from([1.0, 0.5, 0.1, 2.0**-20, 3e-39]))
    s = np.array(draw(st.lists(scales, min_size=n, max_size=n)), np.float32)
    z = np.array(draw(st.lists(st.integers(qmin, qmax), min_size=n, max_size=n)), np.int32)
    if axis is None:
        s, z = float(s[0]), int(z[0])
    return x, s, z, axis, bits, signed


@SETTINGS
@given(quant_case())
def test_quantize_matches_reference(isa, kind, case):
    x, s, z, axis, bits, signed = case
    q = kernels.quantize(as_kind(x, kind), s, z, axis=axis, bits=bits, signed=signed)
    assert str(q.dtype).endswith("int8" if signed else "uint8") and tuple(q.shape) == x.shape
    assert_array_equal(to_np(q), ref.quantize(x, s, z, axis=axis, bits=bits, signed=signed))


@SETTINGS
@given(quant_case(nst.tie_arrays().map(lambda a: np.asarray(a / np.float32(2), np.float32))))
def test_quantize_half_way_cases_round_to_even(isa, case):
    x, s, z, axis, bits, signed = case
    s = 1.0 if axis is None else np.ones_like(s)
    assert_array_equal(kernels.quantize(x, s, z, axis, bits, signed), ref.quantize(x, s, z, axis, bits, signed))


@SETTINGS
@given(quant_case())
def test_dequantize_matches_reference(isa, kind, case):
    x, s, z, axis, bits, signed = case
    q = ref.quantize(x, s, z, axis=axis, bits=bits, signed=signed)
    got = kernels.dequantize(as_kind(q, kind), s, z, axis=axis)
    assert str(got.dtype).endswith("float32")
    want = ref.dequantize(q, s, z, axis=axis)
    np.testing.assert_array_max_ulp(to_np(got), want, maxulp=DEQUANT_ULPS)


@SETTINGS
@given(hnp.arrays(st.sampled_from([np.int8, np.uint8]), nst.shapes()), st.data())
def test_dequantize_any_bytes(isa, q, data):
    signed = q.dtype == np.int8
    z = data.draw(st.integers(-128, 127) if signed else st.integers(0, 255))
    s = data.draw(st.floats(2.0**-20, 2.0**20, width=32))
    np.testing.assert_array_max_ulp(kernels.dequantize(q, s, z), ref.dequantize(q, s, z), maxulp=DEQUANT_ULPS)


@BIG
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.sampled_from([(100_003,), (512, 300), (300, 512), (64, 5, 400), (40_000, 3), (3, 7, 6000)]),
       signed=st.booleans())
def test_large_per_tensor_and_per_channel_every_axis(isa, seed, shape, signed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    for axis in [None, *range(len(shape)), -1]:
        n = 1 if axis is None else shape[axis]
        s = (rng.random(n) * 0.05 + 0.001).astype(np.float32)
        qmin, qmax = ref.qrange(8, signed)
        z = rng.integers(qmin, qmax + 1, n).astype(np.int32)
        if axis is None:
            s, z = float(s[0]), int(z[0])
        q = kernels.quantize(x, s, z, axis=axis, signed=signed)
        assert_array_equal(q, ref.quantize(x, s, z, axis=axis, signed=signed))
        assert_array_equal(kernels.dequantize(q, s, z, axis=axis), ref.dequantize(q, s, z, axis=axis))


def test_rounding_clamping_and_inf(isa):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1e3, -1e3, np.inf, -np.inf, -0.0, 3e38], np.float32)
    assert_array_equal(kernels.quantize(x, 1.0), [0, 2, 2, 0, -2, -2, 127, -128, 127, -128, 0, 127])
    assert_array_equal(kernels.quantize(x, 1.0, 1, bits=2), [1, 1, 1, 1, -1, -1, 1, -2, 1, -2, 1, 1])
    assert_array_equal(kernels.quantize(x, 1.0, 3, bits=4, signed=False),
                       [3, 5, 5, 3, 1, 1, 15, 0, 15, 0, 3, 15])
    # x / scale in float32: 0.3 / 0.1 is 3.0000002 in float32 (not 2.9999999996 as in float64)
    assert kernels.quantize(np.array([0.3], np.float32), 0.1)[0] == np.rint(np.float32(0.3) / np.float32(0.1))


def test_out_argument_and_kinds(kind):
    x = as_kind(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4), kind)
    out = torch.empty(3, 4, dtype=torch.int8) if kind == "torch" else np.empty((3, 4), np.int8)
    assert kernels.quantize(x, 0.1, out=out) is out
    assert_array_equal(to_np(out), ref.quantize(to_np(x), 0.1))
    f = torch.empty(3, 4) if kind == "torch" else np.empty((3, 4), np.float32)
    assert kernels.dequantize(out, 0.1, out=f) is f
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4\), got \(4, 3\)"):
        kernels.quantize(x, 0.1, out=as_kind(np.empty((4, 3), np.int8), kind))
    with pytest.raises(TypeError, match="out must have dtype uint8, got int8"):
        kernels.quantize(x, 0.1, signed=False, out=out)


def test_noncontiguous_inputs(kind):
    base = np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32)
    x = torch.from_numpy(base).T if kind == "torch" else base.T
    s = np.linspace(0.01, 0.1, 6, dtype=np.float32)
    assert_array_equal(to_np(kernels.quantize(x, s, axis=1)), ref.quantize(base.T, s, axis=1))
    q = ref.quantize(base, 0.05)
    qt = torch.from_numpy(q)[:, ::2] if kind == "torch" else q[:, ::2]
    assert_array_equal(to_np(kernels.dequantize(qt, 0.05)), ref.dequantize(q[:, ::2], 0.05))


def test_quantize_errors(kind):
    x = as_kind(np.ones((2, 3), np.float32), kind)
    with pytest.raises(ValueError, match="scale must be finite and > 0, got 0.0$"):
        kernels.quantize(x, 0.0)
    with pytest.raises(ValueError, match="scale must be finite and > 0, got inf$"):
        kernels.quantize(x, 1e39)  # overflows float32
    with pytest.raises(ValueError, match="scale must be finite and > 0, got inf for channel 0"):
        kernels.quantize(x, [1e39, 1.0], axis=0)
    with pytest.raises(ValueError, match="scale must be finite and > 0, got nan for channel 1"):
        kernels.quantize(x, [1.0, np.nan, 1.0], axis=1)
    with pytest.raises(ValueError, match="scale must be finite and > 0, got -1.0 for channel 0"):
        kernels.quantize(x, torch.tensor([-1.0, 1.0]), axis=0)
    with pytest.raises(ValueError, match=r"scale must be 1-D with 3 values \(x.shape\[1\]\), got shape \(2,\)"):
        kernels.quantize(x, [1.0, 1.0], axis=-1)
    with pytest.raises(ValueError, match=r"scale must be a scalar, got shape \(2,\)"):
        kernels.quantize(x, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"zero_point must be in \[-8, 7\], got 8"):
        kernels.quantize(x, 1.0, 8, bits=4)
    with pytest.raises(ValueError, match=r"zero_point must be in \[0, 255\], got -1 for channel 2"):
        kernels.quantize(x, [1.0] * 3, [0, 0, -1], axis=1, signed=False)
    with pytest.raises(TypeError, match="zero_point must be an integer"):
        kernels.quantize(x, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 8\], got 9"):
        kernels.quantize(x, 1.0, bits=9)
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 2\) for a 2-d input, got 2"):
        kernels.quantize(x, [1.0, 1.0], axis=2)
    y = np.zeros((2, 3), np.float32)
    y[1, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN at flat index 4"):
        kernels.quantize(as_kind(y, kind), 1.0)
    with pytest.raises(TypeError, match="x must have dtype float32, got bfloat16"):
        kernels.quantize(torch.ones(2, dtype=torch.bfloat16), 1.0)
    with pytest.raises(TypeError, match="q must have dtype int8 or uint8, got int32"):
        kernels.dequantize(np.ones(2, np.int32), 1.0)
    with pytest.raises(ValueError, match=r"zero_point must be in \[-128, 127\], got 200"):
        kernels.dequantize(np.ones(2, np.int8), 1.0, 200)


def test_streamed_large_outputs(isa):
    """Outputs of >= 16 MiB go through non-temporal stores: still exactly the reference."""
    n = (16 << 20) + 1001
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    q = kernels.quantize(x, 0.02, 3)
    assert_array_equal(q, ref.quantize(x, 0.02, 3))
    q2 = q[: 7 * (n // 7)].reshape(-1, 7)
    s = np.linspace(0.01, 0.05, 7, dtype=np.float32)
    assert_array_equal(kernels.dequantize(q2, s, axis=1), ref.dequantize(q2, s, axis=1))


def test_out_overlapping_the_input_is_refused(kind):
    """An ``out`` that shares memory with the input used to give wrong values silently (dequantize wrote
    float32 over the int8 codes it was still reading: 191 of 256 wrong). It is a ValueError now."""
    buf = np.zeros(256, np.float32)
    buf_k = as_kind(buf, kind)
    q = buf_k.view(torch.int8)[:256] if kind == "torch" else buf_k.view(np.int8)[:256]
    q[:] = 3
    with pytest.raises(ValueError, match="out overlaps q in memory"):
        kernels.dequantize(q, 0.5, out=buf_k)
    x = as_kind(np.linspace(-1, 1, 64, dtype=np.float32), kind)
    codes = x.view(torch.int8)[:64] if kind == "torch" else x.view(np.int8)[:64]
    with pytest.raises(ValueError, match="out overlaps x in memory"):
        kernels.quantize(x, 0.1, out=codes)
    # the same out, now a separate buffer of the same shape, works and is exact
    sep = torch.empty(256, dtype=torch.float32) if kind == "torch" else np.empty(256, np.float32)
    assert_array_equal(to_np(kernels.dequantize(q, 0.5, out=sep)), np.full(256, 1.5, np.float32))
    # views of one buffer that do not overlap are fine
    big = np.zeros(512, np.float32)
    big_k = as_kind(big, kind)
    src = (big_k.view(torch.int8) if kind == "torch" else big_k.view(np.int8))[:256]
    src[:] = 2
    assert_array_equal(to_np(kernels.dequantize(src, 0.25, out=big_k[256:])), np.full(256, 0.5, np.float32))
