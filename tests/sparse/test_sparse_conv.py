"""SparseConv2d: 1x1 and im2col convolutions on the sparse kernels equal the masked Conv2d, in layers and models."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import nnic
from nnic.sparse import SparseConv2d, SparseLinear, sparsify
from nnic.speedup import load_pruned, save_pruned

#: float32 sums in another order than MKL's convolution.
RTOL, ATOL = 1e-5, 1e-5

GEOMETRIES = [
    {"kernel_size": 1},                                                       # 1x1: the input's pixels, no im2col
    {"kernel_size": 1, "stride": 2},
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "bias": False},
]


def _masked_conv(seed: int, density: float = 0.2, **geometry) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 12, **geometry)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < density)
    return conv


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
                         nn.Conv2d(32, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).eval()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
def test_layer_equals_the_masked_conv(geometry):
    conv = _masked_conv(1, **geometry)
    sp = SparseConv2d.from_conv(conv)
    assert isinstance(sp.linear, SparseLinear) and sp.linear.in_features == 8 * conv.kernel_size[0] * conv.kernel_size[1]
    for x in (torch.randn(2, 8, 9, 11), torch.randn(1, 8, 5, 5), torch.randn(8, 7, 6),   # batched, batch 1, unbatched
              torch.randn(2, 9, 11, 8).permute(0, 3, 1, 2)):                             # channels-last (non-contiguous)
        torch.testing.assert_close(sp(x), conv(x), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sp.dense_weight(), conv.weight.detach())
    assert torch.equal(sp.stored_mask(), conv.weight != 0)


def test_n_m_layout_of_a_pointwise_conv_and_int8_values_of_the_inner_layer():
    """The ``nm`` pruner's 2:4 groups (along input channels) are the matmul's groups in a 1x1 convolution: the
    N:M layout; then quantization_speedup of the inner SparseLinear gives the dense int8 layer's codes and output
    on the same pixels."""
    torch.manual_seed(2)
    conv = nn.Conv2d(32, 12, 1)
    nnic.pruner("nm", nn.Sequential(conv), [{"op_types": ["Conv2d"], "n": 2, "m": 4}]).compress()
    from nnic.masking import fold_masks

    fold_masks(conv)
    sp = SparseConv2d.from_conv(conv, nm=(2, 4))
    assert sp.layout == "2:4"
    x = torch.randn(2, 32, 6, 5)
    torch.testing.assert_close(sp(x), conv(x), rtol=RTOL, atol=ATOL)
    model = nn.Sequential(sp)
    nnic.quantization_speedup(model, {"0.linear": 8})
    assert model[0].linear.dtype_name == "int8" and model[0].layout == "2:4"
    reference = nn.Sequential(nn.Linear(32, 12))
    reference[0].load_state_dict({"weight": conv.weight.detach().flatten(1), "bias": conv.bias.detach()})
    nnic.quantization_speedup(reference, {"0": 8})
    assert torch.equal(model[0].linear._dense_values(), reference[0].weight)  # the int8 codes, bit for bit
    want = reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_sparsify_turns_convolutions_sparse_and_records_why_others_stay_dense():
    model = _cnn()
    nnic.pruner("level", model, [{"sparsity": 0.9, "op_types": ["Conv2d"]}]).compress()
    x = torch.randn(2, 3, 16, 16)
    want = model(x).detach()
    report = sparsify(model, x, min_speedup=0.0)
    assert report.sparse_layers == ["0", "2"]
    assert isinstance(model[0], SparseConv2d) and isinstance(model[2], SparseConv2d)
    first, grouped = report.layers["0"], report.layers["4"]
    assert first.kind == "Conv2d" and first.shape == (16, 27) and first.tokens == 2 * 16 * 16  # output pixels
    assert first.layout == "csr" and first.speedup > 0
    assert grouped.chosen == "dense" and "groups = 2" in grouped.reason and isinstance(model[4], nn.Conv2d)
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)
    # an unbatched input is timed as the model sees it
    single = _cnn(1)
    nnic.pruner("level", single, [{"sparsity": 0.9, "op_names": ["0"]}]).compress()
    xs = torch.randn(3, 16, 16)
    want = single[:4](xs).detach()
    report = sparsify(single[:4], xs, min_speedup=0.0, layers=["0"])
    assert report.layers["0"].tokens == 16 * 16 and report.sparse_layers == ["0"]
    torch.testing.assert_close(single[:4](xs), want, rtol=RTOL, atol=ATOL)


def test_save_and_load_without_pickle_at_a_size_that_follows_the_density(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(64, 32, 1)).eval()
    nnic.pruner("level", model, [{"sparsity": 0.9, "op_types": ["Conv2d"]}]).compress()
    x = torch.randn(1, 64, 8, 8)
    sparsify(model, x, min_speedup=0.0)
    want = model(x)
    save_pruned(model, tmp_path / "m")
    dense_bytes = 4 * (64 * 64 * 9 + 64 * 32 + 32)
    assert os.path.getsize(tmp_path / "m" / "model.safetensors") <= 0.15 * dense_bytes  # bitmask 3.1 % + values 10 %
    fresh = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(64, 32, 1)).eval()
    load_pruned(fresh, tmp_path / "m")
    assert isinstance(fresh[0], SparseConv2d) and isinstance(fresh[2], SparseConv2d)
    torch.testing.assert_close(fresh(x), want)


def test_speedup_model_removes_channels_around_a_sparse_convolution():
    """Channels removed upstream disappear from a SparseConv2d's inputs (rule: nnic.builtins.sparse), all taps
    of each removed channel at once."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    with torch.no_grad():
        model[2].weight.mul_(torch.rand_like(model[2].weight) < 0.3)
    model[2] = SparseConv2d.from_conv(model[2])
    keep = torch.ones(16, dtype=torch.bool)
    keep[::3] = False
    masks = {"0": {"weight": keep[:, None, None, None].expand(16, 3, 3, 3).clone(), "bias": keep.clone()}}
    with torch.no_grad():
        model[0].weight.mul_(masks["0"]["weight"])
        model[0].bias.mul_(keep)
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    nnic.speedup_model(model, x, masks)
    assert model[0].out_channels == int(keep.sum()) and model[2].in_channels == int(keep.sum())
    assert isinstance(model[2], SparseConv2d) and model[2].linear.in_features == int(keep.sum()) * 9
    torch.testing.assert_close(model(x), want, rtol=RTOL, atol=ATOL)


def test_bad_convolutions_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="groups = 4"):
        SparseConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=4))
    with pytest.raises(ValueError, match="padding other than explicit zeros"):
        SparseConv2d.from_conv(nn.Conv2d(8, 8, 3, padding="same"))
    with pytest.raises(ValueError, match="padding other than explicit zeros"):
        SparseConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_conv(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="in_channels x kernel"):
        SparseConv2d(SparseLinear(10, 4), 8, 3)
    sp = SparseConv2d.from_conv(_masked_conv(5, kernel_size=3))
    with pytest.raises(ValueError, match=r"expected input \[N, 8, H, W\]"):
        sp(torch.randn(2, 7, 9, 9))
    with pytest.raises(ValueError, match=r"expected input"):
        sp(torch.randn(9, 9))


def test_nan_input_and_all_zero_filters_give_the_masked_convs_output():
    conv = _masked_conv(6, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight[3:6] = 0  # all-zero output channels: bias only
    sp = SparseConv2d.from_conv(conv)
    x = torch.randn(2, 8, 6, 6)
    x[1, 2, 3, 3] = float("nan")
    got, want = sp(x), conv(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want[1]).any()
    ok = ~torch.isnan(want)
    torch.testing.assert_close(got[ok], want[ok], rtol=RTOL, atol=ATOL)
