"""The torch implementation used for tensors on other devices (CUDA), run here on CPU tensors.

nnic.kernels validates the arguments and then calls its torch twins (nnic.kernels.twins); these tests call that path directly
and check it against the same numpy reference as the Rust kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from nnic import kernels
from nnic.kernels import twins as tk
from nnic.testing import reference as ref
from nnic.testing import strategies as nst

SETTINGS = settings(deadline=None, max_examples=25)


def t(a):
    return torch.from_numpy(np.array(a, copy=True))


@SETTINGS
@given(nst.with_k(nst.weight_arrays(), min_k=0))
def test_threshold_and_masks(xk):
    x, k = xk
    assert_array_equal(tk.smallest_abs_mask(t(x), k).numpy(), ref.smallest_abs_mask(x, k))
    if k >= 1:
        assert tk.kth_smallest_abs(t(x), k) == ref.kth_smallest_abs(x, k)


@SETTINGS
@given(st.lists(nst.weight_arrays(), min_size=1, max_size=4), st.data())
def test_global(xs, data):
    k = data.draw(st.integers(0, sum(x.size for x in xs)))
    for m, w in zip(tk.global_smallest_abs_masks([t(x) for x in xs], k), ref.global_smallest_abs_masks(xs, k)):
        assert_array_equal(m.numpy(), w)
    if k >= 1:
        assert tk.global_kth_smallest_abs([t(x) for x in xs], k) == ref.global_kth_smallest_abs(xs, k)


@SETTINGS
@given(nst.float32_arrays(allow_nan=True), st.floats(-1, 5))
def test_inplace(w, thr):
    m = np.random.default_rng(w.size).random(w.shape) < 0.5
    wt = t(w)
    tk.apply_mask_(wt, t(m), check=False)
    assert_array_equal(wt.numpy().view(np.uint32), ref.apply_mask(w, m).view(np.uint32))
    want, kept = ref.prune_by_threshold(w, thr)
    wt = t(w)
    assert tk.prune_by_threshold_(wt, thr) == kept
    assert_array_equal(wt.numpy().view(np.uint32), want.view(np.uint32))


@SETTINGS
@given(nst.with_axis(nst.float32_arrays()), st.integers(2, 8), st.booleans(), st.data())
def test_quant_dequant(xa, bits, signed, data):
    x, axis = xa
    ax = None if axis is None else axis % x.ndim
    qmin, qmax = ref.qrange(bits, signed)
    n = 1 if ax is None else x.shape[ax]
    s = np.array(data.draw(st.lists(st.floats(2.0**-8, 2.0**8, width=32), min_size=n, max_size=n)), np.float32)
    z = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=n, max_size=n)), np.int32)
    out = torch.empty(x.shape, dtype=torch.int8 if signed else torch.uint8)
    q = tk.quantize(t(x), s, z, ax, qmin, qmax, out)
    sr, zr = (float(s[0]), int(z[0])) if ax is None else (s, z)
    assert_array_equal(q.numpy(), ref.quantize(x, sr, zr, axis=ax, bits=bits, signed=signed))
    f = tk.dequantize(q, s, z, ax, torch.empty(x.shape))
    assert_array_equal(f.numpy(), ref.dequantize(q.numpy(), sr, zr, axis=ax))


@SETTINGS
@given(hnp.arrays(np.int8, nst.shapes(), elements=st.integers(-8, 7)))
def test_pack(q):
    p = tk.pack_int4(t(q))
    assert_array_equal(p.numpy(), ref.pack_int4(q))
    assert_array_equal(tk.unpack_int4(p, q.size).numpy(), q.reshape(-1))


@SETTINGS
@given(nst.with_axis(nst.float32_arrays()).filter(
    lambda xa: xa[0].size > 0 if xa[1] is None else (xa[0].shape[xa[1]] == 0 or xa[0].size > 0)))
def test_reductions(xa):
    x, axis = xa
    ax = None if axis is None else axis % x.ndim
    am, (lo, hi) = tk.abs_max(t(x), ax), tk.min_max(t(x), ax)
    if ax is None:
        assert (am, lo, hi) == (ref.abs_max(x), *ref.min_max(x))
    else:
        assert_array_equal(am.numpy(), ref.abs_max(x, ax))
        assert_array_equal(lo.numpy(), ref.min_max(x, ax)[0])
        assert_array_equal(hi.numpy(), ref.min_max(x, ax)[1])


def test_errors_match_the_rust_messages():
    x = np.ones(5, np.float32)
    x[3] = np.nan
    for fn in (lambda a: tk.kth_smallest_abs(a, 1), lambda a: tk.smallest_abs_mask(a, 0), lambda a: tk.abs_max(a, None)):
        with pytest.raises(ValueError, match="x contains NaN at flat index 3"):
            fn(t(x))
    with pytest.raises(ValueError, match=r"xs\[1\] contains NaN at flat index 1"):
        tk.global_smallest_abs_masks([t(x[:2]), t(x[2:])], 1)
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\], got 3 at flat index 1"):
        tk.apply_mask_(torch.ones(2), torch.tensor([1, 3], dtype=torch.uint8), check=True)
    with pytest.raises(ValueError, match=r"q values must be in \[-8, 7\], got -9 at flat index 0"):
        tk.pack_int4(torch.tensor([-9], dtype=torch.int8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatch_matches_cpu():
    x = torch.randn(64, 33)
    xc = x.cuda()
    assert kernels.kth_smallest_abs(xc, 100) == kernels.kth_smallest_abs(x, 100)
    assert torch.equal(kernels.smallest_abs_mask(xc, 700).cpu(), kernels.smallest_abs_mask(x, 700))
    s = x.abs().amax(dim=1) / 127
    assert torch.equal(kernels.quantize(xc, s, axis=0).cpu(), kernels.quantize(x, s, axis=0))
    w = xc.clone()
    kernels.apply_mask_(w, kernels.smallest_abs_mask(xc, 700))
    assert int((w == 0).sum()) >= 700


# --------------------------------------------------------------------------- GEMM twins (what CUDA tensors run)
@pytest.mark.parametrize("m, k, n", [(3, 10, 5), (32, 64, 24)])  # the int64 fallback, then torch._int_mm
def test_int_mm_is_the_exact_integer_product(m, k, n):
    g = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    want = a.long() @ b.long()
    assert torch.equal(tk.int_mm(a, b).long(), want)
    centred = torch.randint(-255, 256, (m, k), generator=g).float()  # static u8 codes minus their zero point
    assert torch.equal(tk.int_mm(centred, b).long(), centred.long() @ b.long())


@pytest.mark.parametrize("act", ["per_token", "per_tensor", "static"])
def test_int8_linear_twin_matches_its_integer_formula(act):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 48, generator=g)
    w = torch.randint(-127, 128, (16, 48), generator=g, dtype=torch.int8)
    ws, wz = torch.rand(16, generator=g) * 0.01 + 1e-3, torch.randint(-3, 4, (16,), generator=g, dtype=torch.int32)
    bias = torch.randn(16, generator=g)
    a_s, a_z = torch.tensor(0.02), torch.tensor(130, dtype=torch.int32)
    static = (a_s, a_z) if act == "static" else (None, None)
    y = tk.int8_linear(x, w, ws, wz, bias, act, True, *static)
    if act == "static":
        q, s = torch.clamp(torch.round(x / a_s) + (a_z - 128), -128, 127) - (a_z - 128), a_s.double()
    else:
        amax = x.abs().amax(dim=1, keepdim=True) if act == "per_token" else x.abs().amax()
        s = (amax / 127).double()
        q = torch.clamp(torch.round(x / (amax / 127)), -127, 127)
    want = (q.double() @ (w.double() - wz.double()[:, None]).T) * s * ws.double() + bias.double()
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_im2col_twin_gives_the_convolution():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 3, 9, 7, generator=g), torch.randn(4, 3, 3, 2, generator=g)
    for stride, padding, dilation in (((1, 1), (0, 0), (1, 1)), ((2, 1), (1, 2), (1, 2))):
        cols, ho, wo = tk.im2col(x, (3, 2), stride, padding, dilation)
        y = (cols @ w.reshape(4, -1).T).reshape(2, ho, wo, 4).permute(0, 3, 1, 2)
        torch.testing.assert_close(y, F.conv2d(x, w, None, stride, padding, dilation), rtol=1e-5, atol=1e-5)
    cols, ho, wo = tk.im2col(x, (1, 1), (2, 2), (0, 0), (1, 1))
    torch.testing.assert_close(cols, x[:, :, ::2, ::2].permute(0, 2, 3, 1).reshape(-1, 3))
