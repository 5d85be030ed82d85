"""SparseLinear and sparsify(): outputs equal the masked model's, int8 composes, files follow the density."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import nnic
from nnic.sparse import SparseLinear, sparsify
from nnic.speedup import load_pruned, save_pruned

#: float32 sums in another order than MKL's, relative to the largest output.
RTOL, ATOL = 1e-5, 1e-5


def _level(model: nn.Module, sparsity: float, **kw) -> dict:
    _, masks = nnic.pruner("level", model, [{"sparsity": sparsity, "op_types": ["Linear"], **kw}]).compress()
    return masks


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 10)).eval()


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_layer_equals_the_masked_linear(nm):
    torch.manual_seed(1)
    lin = nn.Linear(48, 32)
    with torch.no_grad():
        if nm:
            from nnic.builtins.nm import nm_mask

            lin.weight.mul_(nm_mask(lin.weight, *nm))
        else:
            lin.weight.mul_(torch.rand_like(lin.weight) < 0.2)
    sp = SparseLinear.from_linear(lin, nm=nm)
    for shape in [(1, 48), (5, 48), (2, 7, 48), (70, 48)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sp(x), lin(x), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sp.dense_weight(), lin.weight.detach())
    # the torch sparse fallback (what CUDA tensors run) computes the same on CPU
    x = torch.randn(6, 48)
    torch.testing.assert_close(sp._forward_torch_sparse(x), lin(x), rtol=RTOL, atol=ATOL)


def test_the_batch1_kernel_follows_the_break_even_density_and_both_give_the_masked_output():
    from nnic import kernels

    torch.manual_seed(2)
    lin = nn.Linear(256, 40)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) < 0.2)  # density ~0.2
    sp = SparseLinear.from_linear(lin)
    x = torch.randn(1, 256)
    avx512 = kernels.active_isa() == "avx512"
    assert kernels.sparse_bitmask_break_even() == (0.125 if avx512 else float("inf"))
    try:
        outs = {}
        for pin, expect in ((0.5, "gather"), (0.1, "bitmask" if avx512 else "gather")):
            kernels.set_sparse_bitmask_break_even(pin)  # read at every product: the same weight switches
            assert sp._packed_weight().gemv_kernel() == expect
            outs[expect] = sp(x)
            torch.testing.assert_close(outs[expect], lin(x), rtol=RTOL, atol=ATOL)
        with pytest.raises(ValueError, match=">= 0"):
            kernels.set_sparse_bitmask_break_even(float("nan"))
        with pytest.raises(ValueError, match=">= 0"):
            kernels.set_sparse_bitmask_break_even(-1)
        with pytest.raises(TypeError, match="number"):
            kernels.set_sparse_bitmask_break_even("0.2")
    finally:
        kernels.set_sparse_bitmask_break_even(None)
    assert kernels.sparse_bitmask_break_even() == (0.125 if avx512 else float("inf"))
    nm = SparseLinear.from_dense(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), nm=(2, 4))
    assert nm._packed_weight().gemv_kernel() == "n:m"


def test_the_cached_kernel_weight_follows_every_change_of_the_buffers():
    """The packed weight and bias are cached between calls; loading a state dict, editing a buffer in place or
    replacing it must still give the new layer's output (the cache checks identities and versions)."""
    torch.manual_seed(4)
    a, b = nn.Linear(40, 24), nn.Linear(40, 24)
    with torch.no_grad():
        keep = torch.rand(24, 40) < 0.3
        a.weight.mul_(keep)
        b.weight.copy_(torch.randn(24, 40) * keep)
    sp, sp_b = SparseLinear.from_linear(a), SparseLinear.from_linear(b)
    x = torch.randn(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), a(x), rtol=RTOL, atol=ATOL)
        sp.load_state_dict(sp_b.state_dict())           # same pattern, new values and bias: copied in place
        torch.testing.assert_close(sp(x), b(x), rtol=RTOL, atol=ATOL)
        sp.bias.add_(1.0)                               # an in-place edit of one buffer
        torch.testing.assert_close(sp(x), b(x) + 1.0, rtol=RTOL, atol=ATOL)
        sp.bias = torch.zeros(24)                       # a replaced buffer
        torch.testing.assert_close(sp(x), b(x) - b.bias, rtol=RTOL, atol=ATOL)
        sp.double().float()                             # .to() round trip drops and rebuilds the cache
        torch.testing.assert_close(sp(x), b(x) - b.bias, rtol=RTOL, atol=ATOL)


def test_whole_model_equals_the_masked_model_and_records_decisions():
    model = _mlp()
    _level(model, 0.9)
    x = torch.randn(4, 64)
    want = model(x).detach()
    report = sparsify(model, x, min_speedup=0.0)          # every layer sparse: check the outputs
    assert report.sparse_layers == ["0", "2", "4"]
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2, 4))
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)
    d = report.layers["2"]
    assert d.tokens == 4 and d.shape == (96, 128) and abs(d.density - 0.1) < 0.01
    assert d.dense_ms > 0 and d.sparse_ms > 0 and d.speedup > 0 and 0 <= d.win_fraction <= 1  # paired-round median
    assert d.break_even_density == pytest.approx(min(1.0, d.density * d.speedup))
    assert "sparse" in str(report) and report.to_dict()["layers"]["2"]["chosen"] == "sparse"


def test_layers_where_sparse_does_not_pay_stay_dense():
    model = _mlp()
    _level(model, 0.5)
    report = sparsify(model, torch.randn(2, 64), min_speedup=1e9)
    assert report.sparse_layers == [] and all(isinstance(model[i], nn.Linear) for i in (0, 2, 4))
    assert all("min_speedup" in d.reason for d in report.layers.values())
    dense = _mlp()
    report = sparsify(dense, torch.randn(2, 64))
    assert all("max_density" in d.reason for d in report.layers.values())


def test_structured_then_fine_grained_masks_in_one_model():
    """Channels removed first by speedup_model, then the remaining fine-grained zeros executed sparse."""
    model = _mlp(3)
    x = torch.randn(3, 64)
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    nnic.pruner("level", model, [{"sparsity": 0.8, "op_names": ["2", "4"]}]).compress()
    want = model(x).detach()
    nnic.speedup_model(model, x, masks)
    assert model[0].out_features == 64
    sparsify(model, x, min_speedup=0.0)
    assert isinstance(model[2], SparseLinear) and model[2].in_features == 64
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_composes_with_quantization_speedup():
    """Int8Linear -> sparse int8 values, same codes and activation quantization: the int8 model's outputs."""
    model = _mlp(4)
    _level(model, 0.9)
    q = nnic.quantizer("naive", model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"],
                                         "quant_scheme": "per_channel_symmetric"}])
    q.compress()
    calibration = q.calibration()
    nnic.quantization_speedup(model, calibration)
    x = torch.randn(5, 64)
    codes = model[2].weight.clone()
    want = model(x)
    sparsify(model, x, min_speedup=0.0)
    assert isinstance(model[2], SparseLinear) and model[2].dtype_name == "int8"
    assert torch.equal(model[2].values, codes[codes != 0])  # the quantizer's codes, bit for bit
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


class _Block(nn.Module):
    """``down(act(up(x)))``: the MLP shape whose activation moves into ``up``'s epilogue."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(64, 256), act, nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


@pytest.mark.parametrize("act, kind", [(nn.GELU(), "gelu"), (nn.ReLU(), "relu")])
def test_fused_activation_runs_in_the_kernels_and_survives_save_load_int8_and_device_fallback(tmp_path, act, kind):
    """fuse_activation moves the MLP's activation into the sparse layer: same outputs (the kernels and the torch
    fallback), kept by quantization_speedup's sparse lowering; not saved, like every fusion: a loaded model runs
    its own activation module (once)."""
    from nnic.quantization import fuse_activation

    torch.manual_seed(8)
    model = _Block(act).eval()
    _level(model, 0.9)
    sparsify(model, torch.randn(3, 64), min_speedup=0.0)
    assert isinstance(model.up, SparseLinear)
    x = torch.randn(5, 64)
    want = model(x)
    assert fuse_activation(model, "up", "act") == kind
    assert isinstance(model.act, nn.Identity) and model.up.activation == kind and f"activation={kind}" in repr(model.up)
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(model.down(model.up._forward_torch_sparse(x)), want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="already applies"):
        fuse_activation(model, "up", "act")
    save_pruned(model, tmp_path / "m")
    fresh = _Block(act).eval()
    load_pruned(fresh, tmp_path / "m")
    assert isinstance(fresh.up, SparseLinear) and fresh.up.activation is None and not isinstance(fresh.act, nn.Identity)
    torch.testing.assert_close(fresh(x), want, rtol=RTOL, atol=ATOL)
    # int8 values from the fused float layer keep the activation: the int8 model's output, activation included
    nnic.quantization_speedup(model, {"up": 8, "down": 8})
    assert model.up.dtype_name == "int8" and model.up.activation == kind
    torch.testing.assert_close(model(x), want, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseLinear(4, 4, activation="tanh")


def test_an_int8_layer_with_a_fused_activation_goes_sparse_with_it():
    """An Int8Linear that already applies GELU (``fuse_activation`` after ``quantization_speedup``) becomes a
    SparseLinear that applies it too: the int8 layer's outputs, activation included."""
    from nnic.quantization import Int8Linear, fuse_activation

    torch.manual_seed(9)
    model = _Block(nn.GELU()).eval()
    _level(model, 0.9)
    model.up = Int8Linear.from_float(model.up)
    fuse_activation(model, "up", "act")
    x = torch.randn(4, 64)
    want = model(x)
    report = sparsify(model, x, min_speedup=0.0, layers=["up"])
    assert "up" in report.sparse_layers and model.up.activation == "gelu"
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_save_and_load_without_pickle_at_a_size_that_follows_the_density(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    _level(model, 0.9)
    x = torch.randn(2, 1024)
    sparsify(model, x, min_speedup=0.0)
    want = model(x)
    save_pruned(model, tmp_path / "fp32")
    size = os.path.getsize(tmp_path / "fp32" / "model.safetensors")
    assert size <= 0.15 * 1024 * 1024 * 4, size               # bitmask 3.1 % + values 10 %
    fresh = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    load_pruned(fresh, tmp_path / "fp32")
    assert isinstance(fresh[0], SparseLinear)
    torch.testing.assert_close(fresh(x), want)
    # int8 values: <= 6 % of dense float32
    sp8 = SparseLinear.from_dense(torch.where(model[0].dense_weight() != 0, 3, 0).to(torch.int8),
                                  weight_scale=torch.full((1024,), 0.01))
    m8 = nn.Sequential(sp8)
    save_pruned(m8, tmp_path / "int8")
    assert os.path.getsize(tmp_path / "int8" / "model.safetensors") <= 0.06 * 1024 * 1024 * 4
    fresh8 = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    load_pruned(fresh8, tmp_path / "int8")
    torch.testing.assert_close(fresh8(x), m8(x))


def test_bad_input_is_a_clear_error():
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="input has 7 features"):
        SparseLinear.from_linear(lin)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        SparseLinear.from_dense(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="weight_scale"):
        SparseLinear.from_dense(torch.ones(2, 8, dtype=torch.int8))
    model = _mlp()
    with pytest.raises(ValueError, match="not a Linear"):
        sparsify(model, torch.randn(1, 64), layers=["1"])
    with pytest.raises(ValueError, match="mask"):
        sparsify(model, torch.randn(1, 64), masks={"0": {"weight": torch.ones(3, 3)}})
    with pytest.raises(ValueError, match="min_speedup"):
        sparsify(model, torch.randn(1, 64), min_speedup=-1)


def test_nan_input_gives_the_masked_models_nan_rows():
    model = _mlp()
    _level(model, 0.9)
    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    want = model(x).detach()
    sparsify(model, torch.randn(3, 64), min_speedup=0.0)
    got = model(x)
    assert torch.isnan(got[1]).all() and torch.isnan(want[1]).all()
    torch.testing.assert_close(got[[0, 2]], want[[0, 2]], rtol=RTOL, atol=ATOL)


def test_verify_failure_restores_the_model(monkeypatch):
    model = _mlp()
    _level(model, 0.9)
    layers = [model[0], model[2], model[4]]
    monkeypatch.setattr(SparseLinear, "forward", lambda self, x: torch.zeros(*x.shape[:-1], self.out_features))
    with pytest.raises(ValueError, match="verify"):
        sparsify(model, torch.randn(2, 64), min_speedup=0.0)
    assert [model[0], model[2], model[4]] == layers


def test_hugging_face_gpt2_conv1d_layers_go_sparse():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=100)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "Conv1D":
                m.weight.mul_(torch.rand_like(m.weight) < 0.2)
    ids = torch.randint(0, 100, (1, 9))
    want = model(ids).logits
    report = sparsify(model, ids, min_speedup=0.0)
    assert len(report.sparse_layers) == 8 and report.layers["transformer.h.0.mlp.c_fc"].kind == "Conv1D"
    torch.testing.assert_close(model(ids).logits, want, rtol=RTOL, atol=ATOL)


def test_speedup_model_shrinks_sparse_layers_through_their_rule():
    """Channels removed upstream disappear from a SparseLinear's inputs too (rule: nnic.builtins.sparse)."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    with torch.no_grad():
        model[2].weight.mul_(torch.rand_like(model[2].weight) < 0.3)
    model[2] = SparseLinear.from_linear(model[2])
    rows = torch.ones(32, dtype=torch.bool)
    rows[::3] = False
    masks = {"0": {"weight": rows[:, None].expand(32, 16).clone(), "bias": rows.clone()}}
    x = torch.randn(4, 16)
    with torch.no_grad():
        model[0].weight.mul_(masks["0"]["weight"])
        model[0].bias.mul_(rows)
    want = model(x)
    nnic.speedup_model(model, x, masks)
    assert model[0].out_features == int(rows.sum()) and model[2].in_features == int(rows.sum())
    assert isinstance(model[2], SparseLinear)
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_quantization_speedup_after_sparsify_gives_the_int8_models_outputs():
    """sparsify first, then quantization_speedup (lowering in nnic.builtins.sparse): the dense int8 model's codes."""
    model, reference = _mlp(8), _mlp(8)
    _level(model, 0.9)
    _level(reference, 0.9)
    x = torch.randn(5, 64)
    nnic.quantization_speedup(reference, {"0": 8, "2": 8})
    sparsify(model, x, min_speedup=0.0)
    nnic.quantization_speedup(model, {"0": 8, "2": 8})
    assert model[0].dtype_name == "int8" and model[2].dtype_name == "int8" and model[4].dtype_name == "float32"
    codes = reference[2].weight
    assert torch.equal(model[2].values, codes[codes != 0])
    torch.testing.assert_close(model(x), reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("act,symmetric", [("per_token", False), ("per_token", True), ("per_tensor", False)])
def test_torch_sparse_fallback_of_int8_layers_matches_the_kernels(act, symmetric):
    """What CUDA tensors run (torch sparse CSR + the same activation quantization), checked on CPU."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(40, 24))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.25)
    nnic.quantization_speedup(model, {"0": 8}, act=act, symmetric=symmetric)
    sp = SparseLinear.from_int8(model[0])
    x = torch.randn(7, 40)
    torch.testing.assert_close(sp._forward_torch_sparse(x), sp(x), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sp(x), model[0](x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype, act", [("float32", None), ("int8", "per_token"), ("int8", "static")])
def test_every_input_form_gives_the_masked_layers_output(dtype, act):
    """The module's one native call takes what nn.Linear takes: 1-D, 2-D and 3-D inputs, non-contiguous views,
    float64 (computed in float32), inputs that require grad, empty batches; the output is a fresh float32
    tensor shaped like the input with out_features last, which the caller may keep and change."""
    torch.manual_seed(3)
    w = torch.randn(24, 40) * (torch.rand(24, 40) < 0.25)
    bias = torch.randn(24)
    if dtype == "int8":
        codes = torch.randint(-127, 128, (24, 40), dtype=torch.int8) * (w != 0)
        static = {"act_scale": 0.05, "act_zero_point": 7} if act == "static" else {}
        sp = SparseLinear.from_dense(codes, bias, weight_scale=torch.rand(24) / 50 + 1e-3, act=act, **static)
    else:
        sp = SparseLinear.from_dense(w, bias)
    x3 = torch.randn(3, 5, 40)
    inputs = [x3[0, 0], x3[0], x3, torch.randn(40, 6).t(), x3[:, ::2], x3.double(), x3.clone().requires_grad_(),
              torch.zeros(0, 40)]
    for x in inputs:
        y = sp(x)
        want = sp._forward_torch_sparse(x.detach().reshape(-1, 40).float()).reshape(*x.shape[:-1], 24)
        assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], 24)
        torch.testing.assert_close(y, want, rtol=RTOL, atol=ATOL)
    y = sp(x3)
    y.add_(1.0)  # the output is the caller's own
    torch.testing.assert_close(sp(x3), y - 1.0)
    with pytest.raises(ValueError, match="input has 39 features, expected 40"):
        sp(torch.randn(2, 39))


@pytest.mark.parametrize("n, m", [(1, 4), (2, 8), (4, 8), (1, 2)])
def test_general_n_m_masks_of_the_nm_pruner_run_in_their_layout(n, m):
    """Any N:M of the ``nm`` pruner, not only 2:4: the pattern is recognised, the N:M layer equals the masked one,
    and sparsify (which times it against CSR) keeps the masked model's output."""
    from nnic.masking import fold_masks
    from nnic.sparse import layout

    model = _mlp(10)
    nnic.pruner("nm", model, [{"op_types": ["Linear"], "n": n, "m": m}]).compress()
    for i in (0, 2, 4):
        fold_masks(model[i])
    x = torch.randn(4, 64)
    want = model(x).detach()
    assert layout.nm_pattern(model[2].weight != 0) == (n, m)
    sp = SparseLinear.from_linear(model[2], nm=(n, m))
    assert sp.layout == f"{n}:{m}" and sp._packed_weight().gemv_kernel() == "n:m"
    hidden = model[1](model[0](x))
    torch.testing.assert_close(sp(hidden), model[2](hidden), rtol=RTOL, atol=ATOL)
    report = sparsify(model, x, min_speedup=0.0)
    assert report.sparse_layers == ["0", "2", "4"] and report.layers["2"].layout in ("csr", f"{n}:{m}")
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_non_cpu_inputs_take_the_torch_sparse_path(monkeypatch):
    """The forward's device dispatch, exercised on CPU: with tensors reporting a device other than the CPU, the
    layers run torch's sparse CSR matmul (what CUDA runs), and the whole model still gives the masked output."""
    from nnic.sparse import SparseConv2d

    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    _, masks = nnic.pruner("level", model, [{"sparsity": 0.8, "op_types": ["Linear", "Conv2d"]}]).compress()
    x = torch.randn(2, 3, 6, 6)
    want = model(x).detach()
    sparsify(model, x, min_speedup=0.0)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)
    calls = []
    monkeypatch.setattr(SparseLinear, "_forward_torch_sparse",
                        lambda self, t, f=SparseLinear._forward_torch_sparse: calls.append(t.shape) or f(self, t))
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
        got = model(x)
    assert calls == [torch.Size([2 * 6 * 6, 27]), torch.Size([2, 8 * 6 * 6])]  # both layers, on their own rows
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # nn.Linear of an empty layer
def test_empty_layers_and_all_zero_rows_give_the_masked_output():
    """Layers with no inputs, no outputs or no stored weight, and all-zero rows: outputs equal nn.Linear's
    (bias only where nothing is stored), in the layer and through sparsify."""
    torch.manual_seed(12)
    x = torch.randn(3, 16)
    for out_f, in_f in ((0, 16), (8, 0), (0, 0)):
        lin = nn.Linear(in_f, out_f)
        sp = SparseLinear.from_linear(lin)
        xi = torch.randn(3, in_f)
        assert sp(xi).shape == (3, out_f)
        torch.testing.assert_close(sp(xi), lin(xi))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 0), nn.Linear(0, 4))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.1)
        model[0].weight[5:20] = 0          # all-zero rows
        model[2].weight.zero_()            # nothing stored: the bias
    want, want_empty = model[:3](x).detach(), model(x).detach()
    report = sparsify(model, x, min_speedup=0.0)
    assert report.sparse_layers == ["0", "2", "3", "4"] and report.layers["2"].density == 0.0
    assert report.layers["3"].tokens == 3 and report.layers["4"].tokens == 3
    torch.testing.assert_close(model[:3](x), want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(model(x), want_empty)  # no inputs: the bias
