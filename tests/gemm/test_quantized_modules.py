"""Int8Linear / Int8Conv2d / Int4Linear: accuracy against float, state_dict and safetensors round trips."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnic
from nnic import kernels as gemm
from nnic.quantization.modules import Int4Linear, Int8Conv2d, Int8Linear

#: Outputs of an int8 layer against float32 on random data (per-channel weights, per-token activations).
INT8_COSINE = 0.999
INT4_COSINE = 0.99


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_linear_close_to_float(act, symmetric, per_channel):
    lin = nn.Linear(100, 37)
    q = Int8Linear.from_float(lin, act=act, symmetric=symmetric, per_channel=per_channel)
    x = torch.randn(3, 7, 100)
    y = q(x)
    assert y.shape == (3, 7, 37) and y.dtype == torch.float32
    assert cos(y, lin(x)) > INT8_COSINE


def test_reduce_range_layers_run_7_bit_activations_everywhere_and_keep_the_setting():
    """``quantization_speedup(..., reduce_range=True)``: every int8 layer (Linear and Conv2d) quantizes its dynamic
    activations to 7 bits, as the kernel does when asked directly; the CPU twin (the CUDA path's torch code) gives
    the same values; the setting survives pickling and shows in the repr; static activations refuse it."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 40), nn.ReLU(), nn.Linear(40, 10))
    q = nnic.quantization_speedup(copy.deepcopy(model), {"0": 8, "2": 8, "4": 8}, reduce_range=True, symmetric=True)
    layers = [q[0], q[2], q[4]]
    assert all(layer.reduce_range for layer in layers) and "reduce_range" in repr(q[2])
    x = torch.randn(5, 3, 8, 8)
    assert cos(q(x), model(x)) > 0.998
    h = torch.randn(7, 288)
    want = gemm.int8_linear(h, q[2]._packed_weight(), q[2].bias, symmetric=True, reduce_range=True)
    torch.testing.assert_close(q[2](h), want, rtol=0, atol=0)
    assert not torch.equal(want, gemm.int8_linear(h, q[2]._packed_weight(), q[2].bias, symmetric=True))
    twin = gemm.twins.int8_linear(h, q[2].weight, q[2].weight_scale, q[2].weight_zero_point, q[2].bias, "per_token",
                                  True, reduce_range=True)
    torch.testing.assert_close(twin, want, rtol=1e-5, atol=1e-5)
    clone = copy.deepcopy(q)
    assert clone[2].reduce_range and torch.equal(clone(x), q(x))
    with pytest.raises(ValueError, match="reduce_range"):
        Int8Linear(4, 4, act="static", act_scale=0.1, act_zero_point=128, reduce_range=True)


def test_int8_linear_static_activations():
    lin = nn.Linear(64, 16)
    x = torch.randn(20, 64)
    lo, hi = float(x.min()), float(x.max())
    s = (hi - lo) / 255
    q = Int8Linear.from_float(lin, act="static", act_scale=s, act_zero_point=round(-lo / s))
    assert cos(q(x), lin(x)) > INT8_COSINE
    with pytest.raises(ValueError, match="act_scale"):
        Int8Linear(4, 4, act="static")


def test_int8_linear_uses_the_codes_exactly():
    lin = nn.Linear(32, 8, bias=False)
    q = Int8Linear.from_float(lin, act="static", act_scale=1.0, act_zero_point=128)
    x = torch.randint(-50, 50, (5, 32)).float()  # integer inputs: the activation codes are exact
    want = (x.double() @ q.weight.double().t()) * q.weight_scale.double()
    torch.testing.assert_close(q(x).double(), want, rtol=1e-6, atol=1e-6)


def test_int8_linear_state_dict_round_trip_and_repack():
    lin = nn.Linear(48, 24)
    q = Int8Linear.from_float(lin)
    x = torch.randn(4, 48)
    y = q(x)
    sd = q.state_dict()
    assert sd["weight"].dtype == torch.int8 and set(sd) == {"weight", "weight_scale", "weight_zero_point", "bias"}
    fresh = Int8Linear(48, 24)
    fresh(x)  # packs the initial zeros: load_state_dict must invalidate that
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    clone = copy.deepcopy(q)
    torch.testing.assert_close(clone(x), y, rtol=0, atol=0)


def test_int8_linear_weight_zero_points():
    lin = nn.Linear(40, 12)
    w = lin.weight.detach()
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    s = (hi - lo) / 255
    z = (-128 - torch.round(lo / s)).clamp(-128, 127)
    qw = torch.clamp(torch.round(w / s[:, None]) + z[:, None], -128, 127).to(torch.int8)
    q = Int8Linear(40, 12)
    q.set_weight(qw, s, z.to(torch.int32))
    q.bias = lin.bias.detach().clone()
    x = torch.randn(6, 40)
    assert cos(q(x), lin(x)) > INT8_COSINE


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(16, 24, 1),
        lambda: nn.Conv2d(16, 24, 1, stride=2, bias=False),
        lambda: nn.Conv2d(16, 24, 3, padding=1),
        lambda: nn.Conv2d(16, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        lambda: nn.Conv2d(3, 8, 7, stride=2, padding=3),
        lambda: nn.Conv2d(16, 24, 3, padding="valid"),
    ],
)
def test_int8_conv2d_close_to_float(conv):
    c = conv()
    q = Int8Conv2d.from_float(c)
    x = torch.randn(2, c.in_channels, 13, 11)
    y = q(x)
    ref = c(x)
    assert y.shape == ref.shape
    assert cos(y, ref) > INT8_COSINE
    # channels-last input works too (zero-copy path for 1x1)
    torch.testing.assert_close(q(x.contiguous(memory_format=torch.channels_last)), y)


def test_int8_conv2d_unsupported():
    assert "grouped" in Int8Conv2d.supports(nn.Conv2d(4, 4, 3, groups=2))
    assert "padding_mode" in Int8Conv2d.supports(nn.Conv2d(4, 4, 3, padding_mode="reflect"))
    with pytest.raises(ValueError, match="grouped"):
        Int8Conv2d.from_float(nn.Conv2d(4, 4, 3, groups=4))


def test_int8_conv2d_state_dict_round_trip():
    c = nn.Conv2d(8, 16, 3, padding=1)
    q = Int8Conv2d.from_float(c)
    fresh = Int8Conv2d(8, 16, 3, padding=1)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


@pytest.mark.parametrize("in_features", [64, 100, 33])
def test_int4_linear(in_features):
    lin = nn.Linear(in_features, 48)
    q = Int4Linear.from_float(lin, group_size=32)
    x = torch.randn(2, 3, in_features)
    assert cos(q(x), lin(x)) > INT4_COSINE
    codes = q.codes()
    assert codes.shape == (48, in_features) and int(codes.abs().max()) <= 7
    assert q.weight_packed.dtype == torch.uint8 and q.weight_packed.shape == (48, (in_features + 1) // 2)
    fresh = Int4Linear(in_features, 48, group_size=32)
    fresh.load_state_dict(q.state_dict())
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
    torch.testing.assert_close(fresh.codes(), codes)


@pytest.mark.parametrize("make", [
    lambda lin: Int4Linear.from_float(lin, group_size=32),
    lambda lin: Int8Linear.from_float(lin),
    lambda lin: Int8Linear.from_float(lin, act="static", act_scale=0.05, act_zero_point=128),
])
def test_direct_kernel_call_gives_the_checked_paths_outputs(make):
    """A contiguous float32 CPU input goes straight to the kernel (the per-token decode case); any other input
    takes the checked path. Both give the same values: the functional kernels' outputs on the same input."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = make(lin)
    packed, bias = q._packed_weight(), q.bias

    def want(x: torch.Tensor) -> torch.Tensor:
        if isinstance(q, Int4Linear):
            return gemm.int4_linear(x, packed, bias)
        static = {"act_scale": float(q.act_scale), "act_zero_point": int(q.act_zero_point)} if q.act == "static" else {}
        return gemm.int8_linear(x, packed, bias, act=q.act, symmetric=q.symmetric, **static)

    x = torch.randn(2, 5, 96)
    for given in (x, x[0], x[:1, :1], x.transpose(0, 1), x.double(), x.clone().requires_grad_()):
        got = q(given)
        assert got.shape == (*given.shape[:-1], 40) and got.dtype == given.dtype
        torch.testing.assert_close(got.float(), want(given.detach().float().contiguous()), rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), want(x), rtol=0, atol=0)
    for bad in (torch.zeros(3, 95), torch.zeros(())):
        with pytest.raises(ValueError, match=r"input must have shape \[\.\.\., 96\]"):
            q(bad)
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.zeros(3, 96, dtype=torch.int64))


@pytest.mark.parametrize("make", [
    lambda lin: Int4Linear.from_float(lin, group_size=32),
    lambda lin: Int8Linear.from_float(lin),
])
def test_layers_built_under_inference_mode_run_and_see_new_weights(make):
    """Inference tensors have no version counter: the packed-weight cache must not need one, and a weight that
    is replaced afterwards is still packed afresh."""
    torch.manual_seed(0)
    lin, other = nn.Linear(64, 24), nn.Linear(64, 24)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        q = make(lin)
        got = q(x)
        assert torch.equal(got, make(copy.deepcopy(lin))(x))
        fresh = make(other)
        if isinstance(q, Int4Linear):
            q.weight_packed, q.weight_scales = fresh.weight_packed, fresh.weight_scales
            q.weight_scale_step = fresh.weight_scale_step  # 8-bit scales (the default): codes times these steps
        else:
            q.weight, q.weight_scale = fresh.weight, fresh.weight_scale
        q.bias = fresh.bias
        assert torch.equal(q(x), fresh(x))


def test_int4_linear_scales_are_eight_bit_by_default_float16_and_float32_on_request(tmp_path):
    """The default is the smallest format (8-bit codes and a step per output) everywhere a layer is made: the
    module, ``from_float`` and ``quantization_speedup``; float16 (2 bytes per group in the buffer and the file)
    and float32 stay selectable, and a module saved with either reloads into a default module with its own
    scales, so outputs stay equal."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(3, 256)
    assert gemm.DEFAULT_INT4_SCALE_DTYPE == torch.uint8
    assert Int4Linear(256, 64).scale_dtype == torch.uint8 and Int4Linear.from_float(lin).scale_dtype == torch.uint8
    lowered = nnic.quantization_speedup(nn.Sequential(copy.deepcopy(lin)), {"0": 4})
    assert lowered[0].scale_dtype == torch.uint8 and lowered[0].weight_scale_step is not None
    half = Int4Linear.from_float(lin, scale_dtype=torch.float16)
    full = Int4Linear.from_float(lin, scale_dtype=torch.float32)
    assert half.scale_dtype == torch.float16 and full.scale_dtype == torch.float32
    assert half._packed_weight().scale_dtype == "float16" and full._packed_weight().scale_dtype == "float32"
    assert full._packed_weight().nbytes - half._packed_weight().nbytes == 2 * 64 * 8
    # each scale rounded once (and the codes nearest for it): a small difference next to int4's own error
    err = {q: float((q(x) - lin(x)).detach().norm()) for q in (half, full)}
    assert cos(half(x), full(x)) > 0.9999 and err[half] < 1.05 * err[full]
    for q in (half, full):
        save_file(q.state_dict(), tmp_path / "q.safetensors")
        fresh = Int4Linear(256, 64)
        fresh.load_state_dict(load_file(tmp_path / "q.safetensors"))
        assert fresh.scale_dtype == q.scale_dtype
        torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale_dtype must be torch.float16, torch.float32 or torch.uint8"):
        Int4Linear(16, 4, scale_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"scales\[0\] = 1e\+06 is not a positive finite float16"):
        Int4Linear.from_float(nn.Linear(8, 1), group_size=8, weight_q=torch.zeros(1, 8, dtype=torch.int8),
                              weight_scales=torch.full((1, 1), 1e6), scale_dtype=torch.float16)


def test_int4_linear_eight_bit_scales_save_and_reload_in_every_direction(tmp_path):
    """8-bit scale codes with a float32 step per output: 1 byte per group instead of 2, outputs those of the
    dequantized weight, accuracy next to float16 scales; a saved module reloads (safetensors state dict, or
    nnic's manifest) into a default module with its own format, and a float16 file (either way) into an 8-bit
    module."""
    from safetensors.torch import load_file, save_file

    from nnic.speedup import load_pruned, save_pruned

    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(3, 256)
    half, eight = Int4Linear.from_float(lin, scale_dtype=torch.float16), Int4Linear.from_float(lin)
    assert eight.scale_dtype == torch.uint8 and eight._packed_weight().scale_dtype == "uint8"
    assert eight.weight_scale_step.dtype == torch.float32 and tuple(eight.weight_scale_step.shape) == (64,)
    assert half._packed_weight().nbytes - eight._packed_weight().nbytes == 64 * 8 - 4 * 64
    with torch.no_grad():
        ref = x @ eight.dequantized_weight().T + lin.bias  # up to the activations' int8 rounding
        assert cos(eight(x), ref) > 0.9999
    err = {q: float((q(x) - lin(x)).detach().norm()) for q in (half, eight)}
    assert err[eight] < 1.05 * err[half]
    save_file(eight.state_dict(), tmp_path / "u8.safetensors")
    save_file(half.state_dict(), tmp_path / "f16.safetensors")
    for file, src, into in (("u8", eight, torch.float16), ("u8", eight, torch.uint8), ("f16", half, torch.uint8)):
        fresh = Int4Linear(256, 64, scale_dtype=into)
        fresh.load_state_dict(load_file(tmp_path / f"{file}.safetensors"))
        assert fresh.scale_dtype == src.scale_dtype and set(fresh.state_dict()) == set(src.state_dict())
        torch.testing.assert_close(fresh(x), src(x), rtol=0, atol=0)
    model = nn.Sequential(eight, nn.ReLU())
    save_pruned(model, tmp_path / "saved")
    fresh = load_pruned(nn.Sequential(Int4Linear(256, 64), nn.ReLU()), tmp_path / "saved")
    assert fresh[0].scale_dtype == torch.uint8 and "weight_scale_step" in dict(fresh[0].named_buffers())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    model = nn.Sequential(half, nn.ReLU())  # a float16 save into a model built with 8-bit scales
    save_pruned(model, tmp_path / "saved_f16")
    fresh = load_pruned(nn.Sequential(Int4Linear(256, 64, scale_dtype=torch.uint8), nn.ReLU()), tmp_path / "saved_f16")
    assert fresh[0].scale_dtype == torch.float16 and fresh[0].weight_scale_step is None
    assert set(fresh.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("affine", [False, True])
def test_int4_linear_eight_bit_scales_re_round_given_codes_to_the_rounded_up_scales(affine):
    """Codes and float scales given to an 8-bit-scale module: each scale rounds up to code × step, and each weight
    moves by at most half a new step (symmetric), or one and a half with zero points (two roundings and a clamp)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-8, 8, (40, 96), generator=g, dtype=torch.int8)
    s = torch.rand(40, 3, generator=g) * torch.logspace(-3, 0, 40)[:, None] + 1e-4
    z = torch.randint(-8, 8, (40, 3), generator=g, dtype=torch.int8) if affine else None
    lin = nn.Linear(96, 40)
    given = Int4Linear.from_float(lin, weight_q=q, weight_scales=s, weight_zero_points=z, scale_dtype=torch.float32)
    eight = Int4Linear.from_float(lin, weight_q=q, weight_scales=s, weight_zero_points=z, scale_dtype=torch.uint8)
    new_s = eight.group_scales().double()
    assert torch.all(new_s >= s.double()) and torch.all(new_s <= s.double() * 1.5)
    moved = (eight.dequantized_weight().double() - given.dequantized_weight().double()).abs()
    bound = (0.5 if not affine else 1.5) * new_s.repeat_interleave(32, 1) * (1 + 1e-6)
    assert torch.all(moved <= bound)
    x = torch.randn(2, 96, generator=g)
    assert cos(eight(x), given(x)) > 0.999
    with pytest.raises(ValueError, match="scale_step goes with uint8 scale codes"):
        given.set_weight(q, s, scale_step=torch.ones(40))


def test_quantization_speedup_lowers_to_eight_bit_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    x = torch.randn(4, 64)
    want = model(x)
    got = {}
    for dt in (torch.float16, torch.uint8):
        q = nnic.quantization_speedup(copy.deepcopy(model), {"0": 4, "2": 4}, int4_scale_dtype=dt)
        assert all(m.scale_dtype == dt for m in q.modules() if isinstance(m, Int4Linear))
        got[dt] = q(x)
    assert cos(got[torch.uint8], want) > 0.99 and cos(got[torch.uint8], got[torch.float16]) > 0.999


def test_safetensors_quarter_size(tmp_path):
    from safetensors.torch import load_file, save_file

    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
    save_file(model.state_dict(), tmp_path / "f32.safetensors")
    qmodel = nn.Sequential(Int8Linear.from_float(model[0]), nn.ReLU(), Int8Linear.from_float(model[2]))
    save_file(qmodel.state_dict(), tmp_path / "int8.safetensors")
    ratio = os.path.getsize(tmp_path / "int8.safetensors") / os.path.getsize(tmp_path / "f32.safetensors")
    assert ratio < 0.27
    restored = nn.Sequential(Int8Linear(512, 512), nn.ReLU(), Int8Linear(512, 256))
    restored.load_state_dict(load_file(tmp_path / "int8.safetensors"))
    x = torch.randn(3, 512)
    torch.testing.assert_close(restored(x), qmodel(x), rtol=0, atol=0)
    i4 = nn.Sequential(Int4Linear.from_float(model[0]), nn.ReLU(), Int4Linear.from_float(model[2]))
    save_file(i4.state_dict(), tmp_path / "int4.safetensors")
    assert os.path.getsize(tmp_path / "int4.safetensors") / os.path.getsize(tmp_path / "f32.safetensors") < 0.17


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs torch._int_mm there)")
def test_cuda_modules_match_cpu():
    lin = nn.Linear(64, 32)
    x = torch.randn(32, 64)
    for q in (Int8Linear.from_float(lin, symmetric=True), Int4Linear.from_float(lin)):
        y_cpu = q(x)
        y_gpu = q.cuda()(x.cuda()).cpu()
        assert cos(y_gpu, y_cpu) > 0.999


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (3, 5)])
def test_int8_conv2d_fused_im2col_matches_dequantized_reference(kernel):
    c = nn.Conv2d(6, 10, kernel, stride=(1, 2), padding=(kernel[0] // 2, kernel[1] // 2), dilation=(2, 1))
    x = torch.randn(2, 6, 11, 9)
    s, z = float(x.abs().max()) / 127, 128
    q = Int8Conv2d.from_float(c, act="static", act_scale=s, act_zero_point=z)
    got = q(x)  # int8 im2col on the channels-last codes (Rust)
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32)
    xq = (torch.clamp(torch.round(x * inv) + z, 0, 255) - z).double() * torch.tensor(s, dtype=torch.float32).double()
    wq = q.weight.double() * q.weight_scale.double()[:, None, None, None]
    want = F.conv2d(xq, wq, c.bias.double(), c.stride, c.padding, c.dilation)
    size = F.conv2d(xq.abs(), wq.abs(), c.bias.double().abs(), c.stride, c.padding, c.dilation)
    assert torch.all((got.double() - want).abs() <= 1e-5 * size + 1e-7)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_int8_conv2d_bad_input():
    q = Int8Conv2d.from_float(nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match="float32"):
        from nnic import kernels as gemm

        gemm.int8_conv2d(torch.zeros(1, 3, 5, 5, dtype=torch.float64), q._packed_weight(), kernel_size=(3, 3))
    with pytest.raises(ValueError, match="geometry"):
        q(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("make", [
    lambda: Int8Linear.from_float(nn.Linear(8, 4)),
    lambda: Int4Linear.from_float(nn.Linear(16, 4), group_size=8),
    lambda: Int8Conv2d.from_float(nn.Conv2d(2, 3, 3)),
])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_refused_like_float_modules_do(make, dtype):
    torch.manual_seed(0)
    mod = make()
    shape = (2, 2, 5, 5) if isinstance(mod, Int8Conv2d) else (2, mod.in_features)
    with pytest.raises(TypeError, match=rf"{type(mod).__name__}: input must be a floating-point tensor, got "):
        mod(torch.ones(shape, dtype=dtype))


def test_int8_conv2d_accepts_unbatched_input_like_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    q = Int8Conv2d.from_float(conv)
    x = torch.randn(3, 8, 8)
    y = q(x)
    assert y.shape == conv(x).shape == (5, 8, 8)
    assert torch.equal(y, q(x.unsqueeze(0))[0])
    with pytest.raises(ValueError, match="Int8Conv2d: expected a 3-D .unbatched. or 4-D .batched. input, got 2-D"):
        q(torch.randn(8, 8))


# --------------------------------------------------------------------------- group-wise calibrations on int4
def _affine_group_entry(w: torch.Tensor, group_size: int, bits: int = 4, perm: torch.Tensor | None = None) -> dict:
    """An asymmetric (uint codes, per-group zero points) group-wise calibration, as rtn/awq write them."""
    cols = w if perm is None else w[:, perm]
    g = cols.reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(dim=2).clamp(max=0), g.amax(dim=2).clamp(min=0)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax).to(torch.int64)
    entry = {"weight_bits": bits, "weight_dtype": "uint", "weight_scheme": "per_channel_affine", "weight_axis": 0,
             "weight_group_size": group_size, "weight_scale": scale.tolist(), "weight_zero_point": zero.tolist()}
    if perm is not None:
        entry["weight_perm"] = perm.tolist()
    return entry


def _fake_quant(w: torch.Tensor, entry: dict, scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight the calibration describes (the quantizer's simulated weight), in the inputs' order;
    with its codes scaled by the scales as stored in ``scale_dtype``."""
    gs, qmax = entry["weight_group_size"], (1 << entry["weight_bits"]) - 1
    perm = torch.tensor(entry["weight_perm"]) if "weight_perm" in entry else torch.arange(w.shape[1])
    s = torch.tensor(entry["weight_scale"]).repeat_interleave(gs, 1)
    z = torch.tensor(entry["weight_zero_point"]).repeat_interleave(gs, 1).float()
    cols = w[:, perm]
    deq = (torch.clamp(torch.round(cols / s) + z, 0, qmax) - z) * s.to(scale_dtype).float()
    out = torch.empty_like(deq)
    out[:, perm] = deq
    return out


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("bits,group_size,permuted", [(4, 32, False), (4, 64, True), (4, 128, False), (3, 32, False)])
def test_affine_group_wise_calibrations_run_on_int4(bits, group_size, permuted, scale_dtype):
    """rtn/gptq/awq-style weight-only calibrations (uint codes, per-group zero points, act-order permutations)
    lower to Int4Linear with those exact codes: the module's weight is the calibration's simulated weight (each
    scale rounded to float16 when stored so), and its output is the float layer with that weight, up to the
    int8 activation quantization."""
    torch.manual_seed(0)
    fc = nn.Linear(256, 48)
    perm = torch.randperm(256) if permuted else None
    entry = _affine_group_entry(fc.weight.detach(), group_size, bits, perm)
    model = nn.Sequential(fc)
    want_w = _fake_quant(fc.weight.detach(), entry, scale_dtype)
    x = torch.randn(5, 256)
    want = F.linear(x, want_w, fc.bias.detach())
    nnic.quantization_speedup(model, {"0": entry}, int4_scale_dtype=scale_dtype)
    q = model[0]
    assert isinstance(q, Int4Linear) and q.group_size == group_size and q.weight_scales.dtype == scale_dtype
    assert (q.weight_zero_points is not None) and ((q.input_perm is not None) == permuted)
    torch.testing.assert_close(q.dequantized_weight(), want_w, rtol=0, atol=1e-6)
    assert cos(q(x), want) > 0.9999
    fresh = Int4Linear(256, 48, group_size=group_size, affine=True, permuted=permuted)
    fresh.load_state_dict(q.state_dict())
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


@pytest.mark.parametrize("scale_dtype", gemm.INT4_SCALE_DTYPES)
def test_int4_zero_points_out_of_range_are_refused(scale_dtype):
    """Refused as given, in every scale format (8-bit scales re-round the zero points, which must not clamp a bad
    one into range first)."""
    lin = nn.Linear(16, 4)
    q = torch.zeros(4, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"zero points must be in \[-8, 7\]"):
        Int4Linear.from_float(lin, group_size=8, weight_q=q, weight_scales=torch.ones(4, 2),
                              weight_zero_points=torch.full((4, 2), 9), scale_dtype=scale_dtype)
    with pytest.raises(ValueError, match="zero_points must be integers"):
        Int4Linear.from_float(lin, group_size=8, weight_q=q, weight_scales=torch.ones(4, 2),
                              weight_zero_points=torch.full((4, 2), 0.5), scale_dtype=scale_dtype)
    with pytest.raises(ValueError, match="input_perm must be a permutation of 16"):
        Int4Linear.from_float(lin, group_size=8, weight_q=q, weight_scales=torch.ones(4, 2),
                              input_perm=torch.zeros(16, dtype=torch.long), scale_dtype=scale_dtype)
