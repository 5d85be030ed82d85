"""The ``transformer_head`` pruner: which heads each criterion picks, global sort, grouped-query units,
iterative rounds through an evaluator, and the errors it gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnic

T = pytest.importorskip("transformers")
from nnic_transformers import find_heads  # noqa: E402

IDS = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(0))
D = 16


def bert():
    torch.manual_seed(0)
    return T.BertForSequenceClassification(T.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=96,
                                                        max_position_embeddings=32, num_labels=2)).eval()


def weaken(model, layer, head, projections=("query", "key", "value")):
    """Scale a head's rows (and the output columns) down: it is then the least important one."""
    attn = model.bert.encoder.layer[layer].attention
    with torch.no_grad():
        for p in projections:
            getattr(attn.self, p).weight[head * D:(head + 1) * D] *= 0.01
            getattr(attn.self, p).bias[head * D:(head + 1) * D] *= 0.01
        attn.output.dense.weight[:, head * D:(head + 1) * D] *= 0.01


def pruned_heads(masks, layer):
    keep = masks[f"bert.encoder.layer.{layer}.attention.self.value"]["weight"][:, 0]
    return [h for h in range(4) if not keep[h * D:(h + 1) * D].any()]


def batches():
    return [IDS[i:i + 2] for i in range(0, 4, 2)]


@pytest.mark.parametrize("criterion", ["l1_weight", "l2_weight", "l1_activation", "l2_activation", "taylorfo"])
def test_each_criterion_prunes_the_weakened_head(criterion):
    model = bert()
    weaken(model, 0, 2, ("value",) if criterion.endswith(("activation", "taylorfo")) else ("query", "key", "value"))
    weaken(model, 1, 1, ("value",) if criterion.endswith(("activation", "taylorfo")) else ("query", "key", "value"))
    kwargs = {}
    if criterion.endswith("activation"):
        kwargs["data"] = batches()
    elif criterion == "taylorfo":
        kwargs = {"data": [(x, torch.tensor([0, 1])) for x in batches()],
                  "loss_fn": lambda out, y: nn.functional.cross_entropy(out.logits, y)}
    _, masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.25}], criterion=criterion, **kwargs).compress()
    assert pruned_heads(masks, 0) == [2] and pruned_heads(masks, 1) == [1]
    for p in ("query", "key", "value"):  # masked together, weights and biases
        m = masks[f"bert.encoder.layer.0.attention.self.{p}"]
        assert not m["weight"][2 * D:3 * D].any() and not m["bias"][2 * D:3 * D].any()
        assert m["weight"][:2 * D].all() and m["weight"][3 * D:].all()


def test_total_sparsity_sorts_heads_across_layers():
    model = bert()
    weaken(model, 0, 0)
    weaken(model, 0, 3)
    _, masks = nnic.pruner("transformer_head", model, [{"total_sparsity": 0.25}]).compress()
    assert pruned_heads(masks, 0) == [0, 3] and pruned_heads(masks, 1) == []
    model = bert()
    for head in (0, 1, 3):
        weaken(model, 0, head)
    _, masks = nnic.pruner("transformer_head", model, [{"total_sparsity": 0.5, "max_sparsity_per_layer": 0.5}]).compress()
    assert len(pruned_heads(masks, 0)) == 2 and len(pruned_heads(masks, 1)) == 2  # layer 0 capped at half


def test_grouped_query_units_are_a_key_value_head_with_all_its_query_heads():
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                             num_key_value_heads=4, num_hidden_layers=1, vocab_size=100)).eval()
    _, masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}], criterion="l2_weight").compress()
    q = masks["model.layers.0.self_attn.q_proj"]["weight"][:, 0].reshape(4, 2 * 8)  # per kv group
    k = masks["model.layers.0.self_attn.k_proj"]["weight"][:, 0].reshape(4, 8)
    o = masks["model.layers.0.self_attn.o_proj"]["weight"][0].reshape(4, 2 * 8)
    gone = ~k.any(1)
    assert int(gone.sum()) == 2
    assert torch.equal(~q.any(1), gone) and torch.equal(~o.any(1), gone) and q[~gone].all()


def test_iterative_rounds_fine_tune_through_the_evaluator_and_keep_pruned_heads():
    from nnic.evaluator import LoopEvaluator

    model = bert()
    data = [(x, torch.tensor([0, 1])) for x in batches()]
    evaluator = LoopEvaluator(data, lambda p: torch.optim.SGD(p, lr=1e-3),
                              lambda out, y: nn.functional.cross_entropy(out.logits, y))
    pruner = nnic.pruner("transformer_head", model, [{"sparsity": 0.5}], evaluator=evaluator, total_iteration=2,
                         training_steps=2)
    _, masks = pruner.compress()
    assert evaluator.total_steps == 2  # one fine-tuning between the two rounds
    assert [len(pruned_heads(masks, i)) for i in (0, 1)] == [2, 2]


def test_mistakes_are_named():
    with pytest.raises(ValueError, match=r"criterion: expected one of l1_weight.*got 'l3'"):
        nnic.pruner("transformer_head", bert(), [{"sparsity": 0.5}], criterion="l3")
    with pytest.raises(ValueError, match=r"'l1_activation' needs data"):
        nnic.pruner("transformer_head", bert(), [{"sparsity": 0.5}], criterion="l1_activation")
    with pytest.raises(ValueError, match=r"'classifier' \(Linear\) is not an attention module"):
        nnic.pruner("transformer_head", bert(), [{"sparsity": 0.5, "op_names": ["classifier"], "op_types": ["Linear"]}])
    with pytest.raises(ValueError, match=r"total_iteration > 1.*evaluator"):
        nnic.pruner("transformer_head", bert(), [{"sparsity": 0.5}], total_iteration=3)


def test_a_user_described_attention_module():
    from nnic_transformers import Layout

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(16, 16) for _ in range(4))
            self.hd = 4

    model = nn.Sequential(Attn())
    layout = Layout("wq", "wk", "wv", "wo", "hd")
    assert [h.num_heads for h in find_heads(model, {Attn: layout})] == [4]
    _, masks = nnic.pruner("transformer_head", model, [{"sparsity": 0.5, "op_names": ["0"]}],
                           layouts={"0": layout}).compress()
    assert int((~masks["0.wv"]["weight"][:, 0]).sum()) == 8
