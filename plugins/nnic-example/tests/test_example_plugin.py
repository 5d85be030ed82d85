import torch
from torch import nn

import nnic


def test_random_pruner_is_found_through_its_entry_point_and_prunes_exactly():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 3))
    _, masks = nnic.pruner("example_random", model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    assert int((~masks["0"]["weight"]).sum()) == 100
    assert int((model[0].weight == 0).sum()) >= 100


def test_pow2_quantizer_scales_are_powers_of_two():
    model = nn.Sequential(nn.Linear(16, 8))
    q = nnic.quantizer("example_shift", model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}])
    q.compress()
    scale = torch.tensor(q.calibration()["0"]["weight_scale"])
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)
