"""count_flops / count_params against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic
from nnic.measure import count_flops, count_nonzero_params, count_params, params_per_layer


def test_conv2d_macs_are_output_elements_times_input_channels_times_kernel():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # output 8 x 5 x 6 per sample, each element a dot product over 3 channels x 3 x 3 taps
    assert count_flops(conv, torch.randn(2, 3, 5, 6)) == 2 * (8 * 5 * 6) * (3 * 3 * 3)


def test_grouped_strided_conv_counts_only_its_groups_inputs():
    conv = nn.Conv2d(8, 16, (3, 1), stride=2, groups=4)
    # output H = (9 - 3) // 2 + 1 = 4, W = (7 - 1) // 2 + 1 = 4; each output sees 8/4 channels x 3 taps
    assert count_flops(conv, torch.randn(1, 8, 9, 7)) == 16 * 4 * 4 * 2 * 3


def test_transposed_conv_counts_input_elements_times_outputs_per_input():
    conv = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert count_flops(conv, torch.randn(1, 4, 3, 3)) == 4 * 3 * 3 * 6 * 2 * 2


def test_linear_macs_per_token():
    lin = nn.Linear(20, 7)
    assert count_flops(lin, torch.randn(3, 5, 20)) == 3 * 5 * 7 * 20


def test_a_module_called_twice_counts_twice_under_its_name():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(16, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.shared(torch.relu(self.shared(x))))

    flops = count_flops(Twice(), torch.randn(2, 16))
    assert flops.per_layer == {"shared": 2 * (2 * 16 * 16), "head": 2 * 4 * 16}
    assert flops.total == flops == 2 * 2 * 16 * 16 + 2 * 4 * 16


def test_a_layer_the_forward_never_reaches_counts_nothing():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 1000)

        def forward(self, x):
            return self.used(x)

    assert count_flops(Skips(), torch.randn(1, 4)).per_layer == {"used": 16}


def test_multihead_attention_counts_projections_scores_and_weighted_sum():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q = torch.randn(1, 5, 8)
    projections = 3 * 5 * 8 * 8 + 5 * 8 * 8
    attention = 2 * 5 * 5 * 8  # q k^T and (weights) v, over all heads
    assert count_flops(mha, (q, q, q)).total == projections + attention


def test_a_sequential_model_sums_its_layers_and_keeps_its_mode():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model.train()
    flops = count_flops(model, torch.randn(1, 1, 6, 6))
    assert flops.per_layer == {"0": 4 * 4 * 4 * 9, "4": 3 * 64}
    assert model.training and all(m.training for m in model.modules())


def test_int8_modules_count_the_macs_of_the_layers_they_replace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.randn(2, 3, 6, 6)
    dense = count_flops(model, x).per_layer
    nnic.quantization_speedup(model, {"0": 8, "3": 8})
    assert type(model[3]).__name__ == "Int8Linear"
    assert count_flops(model, x).per_layer == dense


def test_params_count_tied_weights_once():
    emb, head = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert count_params(model) == 60
    assert params_per_layer(model) == {"0": (60, 60)}


def test_nonzero_params_see_masks_and_int8_codes_count_as_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    dense = count_params(model)
    nnic.pruner("level", model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    assert count_params(model) == dense == 32 * 16 + 16 + 16 * 4 + 4
    # exactly floor(0.5 n) weights pruned per layer; biases untouched
    assert count_nonzero_params(model) == dense - (32 * 16 + 16 * 4) // 2
    assert params_per_layer(model)["0"] == (32 * 16 + 16, 32 * 16 // 2 + 16)


@pytest.mark.parametrize("bits, module", [(8, "Int8Linear"), (4, "Int4Linear")])
def test_low_bit_linear_counts_its_weight_codes(bits, module):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8))
    nnic.quantization_speedup(model, {"0": {"weight_bits": bits, "weight_scheme": "per_channel_symmetric"}}
                              if bits == 4 else {"0": bits})
    assert type(model[0]).__name__ == module
    assert count_params(model) == 64 * 8 + 8
