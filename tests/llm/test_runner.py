"""The sequential runner: finds the blocks of common LLM layouts, compresses block by block on activations
produced by the already-compressed blocks, holds one block's activations, and fails cleanly on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic
from nnic.llm.runner import SequentialRunner

from .helpers import hf_model, same_state, snapshot, token_batches

ARCHS = ["gpt2", "opt", "llama", "qwen2", "mistral"]
BLOCKS = {"gpt2": "transformer.h", "opt": "model.decoder.layers", "llama": "model.layers", "qwen2": "model.layers",
          "mistral": "model.layers"}


def select(arch: str) -> list[dict]:
    return [{"op_types": ["Linear", "Conv1D"], "sparsity": 0.5}, {"exclude": True, "op_names": ["lm_head"]}]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_of_every_block_is_compressed_with_a_reported_error(arch):
    model = hf_model(arch)
    pruner = nnic.pruner("sparsegpt", model, select(arch), calibration_data=token_batches(), progress=False)
    _, masks = pruner.compress()
    blocks = [n for n, _ in pruner.runner.blocks]
    assert blocks == [f"{BLOCKS[arch]}.{i}" for i in range(2)]
    linear = {n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")
              or type(m).__name__.startswith("Parametrized")} - {"lm_head"}
    linear = {n for n in linear if n.startswith(BLOCKS[arch])}
    assert set(masks) == linear and set(pruner.report()) == linear
    for name, err in pruner.report().items():
        assert 0 < err < 1, (name, err)  # pruned half of the weights: some error, far less than all of it
    assert all(float((~m["weight"]).float().mean()) == 0.5 for m in masks.values())


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # Conv1D weights are stored [in, out]: a transposed view
def test_per_layer_scope_prunes_exactly_half_of_each_layer(arch, name):
    cfg = [{"op_types": ["Linear", "Conv1D"], "sparsity": 0.5, "sparsity_scope": "layer"},
           {"exclude": True, "op_names": ["lm_head"]}]
    _, masks = nnic.pruner(name, hf_model(arch), cfg, calibration_data=token_batches(), progress=False).compress()
    assert masks and all(int((~m["weight"]).sum()) == m["weight"].numel() // 2 for m in masks.values())
    rows = torch.cat([(~m["weight"]).float().mean(1) for m in masks.values()])
    assert rows.std() > 0  # per layer, not per row: rows lose different shares


class Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        return x + self.fc(x)


class Stack(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.stages = nn.ModuleList(Doubler() for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        for s in self.stages:
            x = s(x)
        return self.head(x)


class Recorder:
    """A LayerAlgorithm that zeroes every weight and records the inputs each layer saw."""

    def __init__(self):
        self.seen: dict[str, list[torch.Tensor]] = {}

    def observe(self, name, module, x):
        self.seen.setdefault(name, []).append(x.clone())

    def compress_group(self, names, modules):
        for m in modules:
            m.weight.data.zero_()

    def undo(self):
        pass


def test_each_block_sees_the_outputs_of_the_compressed_blocks_before_it():
    torch.manual_seed(0)
    model = Stack(3)
    data = [torch.randn(5, 4) for _ in range(3)]
    layers = {f"stages.{i}.fc": model.stages[i].fc for i in range(3)}
    algo = Recorder()
    SequentialRunner(model, layers, data, progress=False).run(algo)
    # Every fc was zeroed before the next block ran, so every block passes its input through unchanged:
    # all three layers saw exactly the embedding's output.
    for i in range(3):
        got = torch.cat(algo.seen[f"stages.{i}.fc"])
        assert torch.equal(got, torch.cat([model.embed(x) for x in data]).detach())


def test_user_named_blocks_and_nothing_after_the_blocks_runs():
    model = Stack(2)
    calls = []
    model.head.register_forward_hook(lambda *a: calls.append(1))
    pruner = nnic.pruner("wanda", model, [{"op_names": ["stages.0.fc", "stages.1.fc"], "sparsity": 0.25}],
                         calibration_data=[torch.randn(3, 4)], blocks=["stages.0", "stages.1"], progress=False)
    pruner.compress()
    assert calls == []
    assert set(pruner.report()) == {"stages.0.fc", "stages.1.fc"}


@pytest.mark.parametrize("n_blocks", [2, 6])
def test_memory_holds_one_block_of_activations_whatever_the_depth(n_blocks):
    model = Stack(n_blocks)
    data = [torch.randn(16, 4) for _ in range(4)]
    layers = {f"stages.{i}.fc": model.stages[i].fc for i in range(n_blocks)}
    runner = SequentialRunner(model, layers, data, progress=False)
    runner.run(Recorder())
    one_block = 4 * 16 * 8 * 4  # batches x rows x hidden x float32 bytes
    assert runner.peak_activation_bytes == one_block


def test_hf_gpt2_memory_is_one_block_of_hidden_states():
    model = hf_model("gpt2", layers=4)
    data = token_batches(n=3, batch=2, seq=16)
    pruner = nnic.pruner("wanda", model, select("gpt2"), calibration_data=data, progress=False)
    pruner.compress()
    assert pruner.runner.peak_activation_bytes == 3 * 2 * 16 * 64 * 4


# -- bad input: a clear error, and the model unchanged -----------------------------------------------------------

def test_no_calibration_data_is_an_error_naming_the_argument():
    model = hf_model("llama")
    before = snapshot(model)
    for name in ("wanda", "sparsegpt"):
        with pytest.raises(ValueError, match="calibration_data: expected an iterable"):
            nnic.pruner(name, model, select("llama"))
    with pytest.raises(ValueError, match="calibration_data: expected at least one batch"):
        nnic.quantizer("gptq", model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 32,
                                        "op_types": ["Linear"]}, {"exclude": True, "op_names": ["lm_head"]}],
                       calibration_data=[], progress=False).compress()
    assert same_state(model, before)


def test_a_block_list_that_does_not_exist_is_an_error_listing_the_real_ones():
    model = hf_model("gpt2")
    with pytest.raises(ValueError, match=r"blocks: 'model\.layers' is not a module.*'transformer\.h' \(2 x GPT2Block\)"):
        nnic.pruner("wanda", model, select("gpt2"), calibration_data=token_batches(), blocks="model.layers")
    with pytest.raises(ValueError, match=r"blocks: \['transformer\.h\.9'\] are not modules"):
        nnic.pruner("wanda", model, select("gpt2"), calibration_data=token_batches(),
                    blocks=["transformer.h.0", "transformer.h.9"])


def test_a_selected_layer_outside_the_blocks_must_be_excluded():
    model = hf_model("llama")
    with pytest.raises(ValueError, match=r"'lm_head', which is outside the transformer blocks.*'exclude': True"):
        nnic.pruner("wanda", model, [{"op_types": ["Linear"], "sparsity": 0.5}], calibration_data=token_batches())


def test_group_size_that_does_not_divide_the_input_dimension_is_an_error():
    model = hf_model("llama")
    before = snapshot(model)
    for name in ("rtn", "gptq", "awq"):
        with pytest.raises(ValueError, match=r"config_list\[0\]\['group_size'\]: 48 does not divide the input "
                                             r"dimension 64 of 'model\.layers\.0\.self_attn\.q_proj'"):
            nnic.quantizer(name, model, [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 48,
                                          "op_types": ["Linear"]}, {"exclude": True, "op_names": ["lm_head"]}],
                           calibration_data=token_batches())
    assert same_state(model, before)


def test_nan_in_activations_is_an_error_and_every_weight_is_restored():
    model = hf_model("llama", layers=3)
    before = snapshot(model)
    # NaN appears inside block 1, after block 0 was already compressed: block 0 must be restored too.
    model.model.layers[1].mlp.act_fn = nn.Sequential(nn.SiLU(), nn.Threshold(1e9, float("nan")))
    for name, kind, cfg in [("sparsegpt", "pruner", select("llama")),
                            ("gptq", "quantizer", [{"quant_types": ["weight"], "quant_bits": 4, "group_size": 32,
                                                    "op_types": ["Linear"]},
                                                   {"exclude": True, "op_names": ["lm_head"]}])]:
        make = nnic.pruner if kind == "pruner" else nnic.quantizer
        c = make(name, model, cfg, calibration_data=token_batches(), progress=False)
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj: NaN or infinite values"):
            c.compress()
        assert same_state(model, before)
        assert not any("parametrizations" in n for n, _ in model.named_modules())


def test_nan_in_the_calibration_inputs_of_the_first_block_is_an_error():
    model = Stack(2)
    bad = [torch.randn(3, 4), torch.full((3, 4), float("nan"))]
    with pytest.raises(ValueError, match=r"batch 1 gives NaN or infinite activations at the input of 'stages\.0'"):
        nnic.pruner("wanda", model, [{"op_names": ["stages.0.fc"], "sparsity": 0.5}], calibration_data=bad,
                    progress=False).compress()
