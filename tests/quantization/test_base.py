"""The Quantizer base class: what a quantizer that only overrides the basics (the plugin template) may be asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnic.quantization import Quantizer


class PlainQuantizer(Quantizer):
    """A third-party quantizer that narrows nothing, like the template plugin."""

    name = "plain"


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("bits", [1, 17, 32])
def test_bits_the_base_grid_cannot_simulate_are_refused_by_entry_and_key(bits):
    config = [{"quant_types": ["weight"], "quant_bits": 8, "op_names": ["0"]},
              {"quant_types": ["weight"], "quant_bits": bits, "op_names": ["2"]}]
    with pytest.raises(ValueError, match=rf"config_list\[1\]\['quant_bits'\]: the plain quantizer supports 2 to 16 "
                                         rf"bits, got {bits} for 'weight'"):
        PlainQuantizer(model(), config)


@pytest.mark.parametrize("bits", [2, 8, 12, 16])
def test_every_accepted_width_gives_finite_weights_on_the_grid(bits):
    m = model()
    q = PlainQuantizer(m, [{"quant_types": ["weight"], "quant_bits": bits, "op_types": ["Linear"]}])
    q.compress()
    for entry, layer in zip(q.calibration().values(), (m[0], m[2])):
        w = layer.weight.detach()
        assert torch.isfinite(w).all()
        codes = w / torch.tensor(entry["weight_scale"])
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert float(codes.abs().max()) <= (1 << (bits - 1)) - 1 + 1e-3


def test_a_narrower_subclass_reports_its_own_span():
    class EightBit(PlainQuantizer):
        name = "eight"
        supported_bits = (8, 8)
        supported_quant_types = ("weight",)

    with pytest.raises(ValueError, match=r"config_list\[0\]\['quant_bits'\]: the eight quantizer supports 8 bit, got 4"):
        EightBit(model(), [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}])
    with pytest.raises(ValueError, match=r"config_list\[0\]\['quant_types'\]: the eight quantizer quantizes weight only"):
        EightBit(model(), [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}])


def test_a_symmetric_1_bit_grid_is_refused_instead_of_giving_nan():
    from nnic.quantization.qparams import QuantSpec, qparams_from_range

    with pytest.raises(ValueError, match="symmetric 1-bit grid has no positive level"):
        qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), QuantSpec(1))
