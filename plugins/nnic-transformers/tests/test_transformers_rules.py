"""Hugging Face BERT and ViT: whole attention heads and FFN channels removed, outputs unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

import nnic

transformers = pytest.importorskip("transformers")


def value_head_masks(linear, heads, d):
    w = torch.ones_like(linear.weight, dtype=torch.bool)
    b = torch.ones_like(linear.bias, dtype=torch.bool)
    for h in heads:
        w[h * d:(h + 1) * d], b[h * d:(h + 1) * d] = False, False
    return {"weight": w, "bias": b}


def ffn_masks(linear, fraction=0.5):
    keep = torch.arange(linear.out_features) % int(1 / fraction) != 0
    return {"weight": keep[:, None].expand_as(linear.weight).clone(), "bias": keep.clone()}


def _main(out):
    out = getattr(out, "last_hidden_state", out)
    return out[0] if isinstance(out, tuple) else out


def check(model, masks, x):
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, per in masks.items():
            for p, m in per.items():
                getattr(ref.get_submodule(layer), p).mul_(m)
        expected = ref(x)
    before = sum(p.numel() for p in model.parameters())
    nnic.speedup_model(model, x, masks)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(_main(got), _main(expected), rtol=1e-4, atol=1e-5)
    return before, sum(p.numel() for p in model.parameters())


def test_bert_heads_and_ffn():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    layer0, layer1 = model.encoder.layer
    masks = {"encoder.layer.0.attention.self.value": value_head_masks(layer0.attention.self.value, [1, 2], 8),
             "encoder.layer.1.attention.self.value": value_head_masks(layer1.attention.self.value, [3], 8),
             "encoder.layer.0.intermediate.dense": ffn_masks(layer0.intermediate.dense)}
    before, after = check(model, masks, torch.randint(0, 100, (2, 8)))
    assert layer0.attention.self.num_attention_heads == 2 and layer1.attention.self.num_attention_heads == 3
    assert layer0.attention.output.dense.in_features == 16 and layer0.intermediate.dense.out_features == 32
    assert after < before


def test_vit_heads():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                    intermediate_size=64, attn_implementation="eager")
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    layer = model.layers[0]  # ViTModel's own forward branches on the input dtype: speed up its layers
    attn = layer.attention
    masks = {"attention.v_proj": value_head_masks(attn.v_proj, [0], 8), "mlp.fc1": ffn_masks(layer.mlp.fc1)}
    check(layer, masks, torch.randn(2, 17, 32))
    assert attn.num_attention_heads == 3 and attn.o_proj.in_features == 24


def test_loading_the_plugin_does_not_import_transformers():
    """Every nnic registry lookup loads this plugin; transformers (seconds to import) waits until a speedup needs it."""
    import subprocess
    import sys

    code = ("import sys, nnic; infos = nnic.list_plugins('speedup_rule'); "
            "assert any(i.distribution == 'nnic-transformers' for i in infos); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_speeding_up_a_model_without_transformers_classes_does_not_import_transformers():
    """The rule table reads the plugin's targets from the transformers modules already imported: a model with
    no transformers class (a torchvision CNN) is sped up without the seconds of importing transformers."""
    import subprocess
    import sys

    code = ("import sys, torch, nnic; from torch import nn; "
            "m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)); "
            "masks = {'0': {'weight': torch.arange(8).view(8, 1, 1, 1).expand(8, 3, 3, 3) % 2 == 0}}; "
            "nnic.speedup_model(m, torch.randn(1, 3, 8, 8), masks); "
            "assert m[0].out_channels == 4, m; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_rules_find_classes_imported_after_the_plugin_loaded():
    """Targets are read per speedup, not cached at plugin load: a transformers model class imported later is
    still covered (this test process may have loaded the registry before importing any transformers model)."""
    import nnic
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.pytorch_utils import Conv1D

    targets = {t for info in nnic.list_plugins("speedup_rule") if info.distribution == "nnic-transformers"
               for t in info.obj.targets}
    assert {GPT2Attention, Conv1D} <= targets
