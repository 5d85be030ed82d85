"""What speedup promises when things go wrong: a failed speedup leaves the model exactly as it was, shared
parameters stay shared, half-precision models verify, and bad arguments are refused with a clear error."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import nnic
from nnic.speedup import CaptureError, SpeedupError

from .helpers import channel_masks, masked_output

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Branchy(nn.Module):
    """Three convs and a data-dependent branch: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        if y.sum() > 0:
            y = y * 2
        return self.c(y)


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, before: dict[str, torch.Tensor], classes: dict[str, type]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert {n: type(m) for n, m in model.named_modules()} == classes


def snapshot(model):
    return state(model), {n: type(m) for n, m in model.named_modules()}


@pytest.mark.parametrize("attached", [False, True], ids=["masks-dict", "masks-attached-by-pruner"])
def test_an_untraceable_model_keeps_its_weights_and_masks(attached):
    model = Branchy()
    masks = channel_masks(model, 0.5, types=(nn.Conv2d,))
    if attached:
        nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).compress()
        masks = {}
    before = snapshot(model)
    with torch.no_grad():
        out = model(X)
    with pytest.raises(CaptureError):
        nnic.speedup_model(model, X, masks, capture="fx")
    assert_same(model, *before)
    with torch.no_grad():
        assert torch.equal(model(X), out)


def test_a_wrong_dummy_input_leaves_the_model_as_it_was():
    model = cnn().train()
    masks = channel_masks(model, 0.5, types=(nn.Conv2d,))
    before = snapshot(model)
    with pytest.raises(RuntimeError):
        nnic.speedup_model(model, torch.randn(2, 5, 8, 8), masks)  # 5 channels into a 3-channel conv
    assert_same(model, *before)
    assert all(m.training for m in model.modules())


class Mean(nn.Module):
    def forward(self, x):
        return x.mean(1, keepdim=True)


def test_a_failed_verification_restores_masks_a_pruner_attached():
    class Lying(nnic.speedup.Rule):
        name, targets = "test.lying-mean", (Mean,)

        def propagate(self, call):  # claims the channel mean reads none of its input channels
            call.sink(call.spec(0).ids, torch.ones(len(call.spec(0)), dtype=torch.bool))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1))
    nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    before = snapshot(model)
    with pytest.raises(SpeedupError, match="verify"):
        nnic.speedup_model(model, X, rules=[Lying()], leaf_modules=[Mean])
    assert_same(model, *before)
    assert nn.utils.parametrize.is_parametrized(model[0], "weight")


@pytest.mark.parametrize("given", ["attached", "other"])
def test_a_failed_verification_with_attached_masks_restores_every_value(given):
    """The originals behind attached masks are not copied when speedup only writes under those masks; masks
    given beside them that zero other positions make speedup copy them first."""
    class Lying(nnic.speedup.Rule):
        name, targets = "test.lying-mean", (Mean,)

        def propagate(self, call):
            call.sink(call.spec(0).ids, torch.ones(len(call.spec(0)), dtype=torch.bool))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1))
    _, masks = nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    if given == "other":  # the complement: zeroes the rows the attached mask keeps
        masks = {"0": {"weight": ~masks["0"]["weight"]}}
    before = snapshot(model)
    assert bool(before[0]["0.parametrizations.weight.original"].ne(0).any())
    with pytest.raises(SpeedupError, match="verify"):
        nnic.speedup_model(model, X, masks, rules=[Lying()], leaf_modules=[Mean])
    assert_same(model, *before)


def test_masks_given_as_a_tensor_are_a_type_error():
    model = cnn()
    with pytest.raises(TypeError, match=r"masks: expected a dict"):
        nnic.speedup_model(model, X, torch.ones(3))


def test_a_meta_device_model_is_a_value_error_before_any_work():
    with torch.device("meta"):
        model = cnn()
    with pytest.raises(ValueError, match=r"model: '0.weight' is on the meta device"):
        nnic.speedup_model(model, X, {})
    with pytest.raises(ValueError, match=r"dummy_input: .*meta device"):
        nnic.speedup_model(cnn(), X.to("meta"), {})


def test_a_meta_buffer_deep_in_the_tree_or_behind_a_mask_is_found_and_named():
    """The meta check walks every module's own parameters and buffers, nested containers and the originals
    behind attached masks included."""
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.ReLU())
    model[0][1].register_buffer("running_mean", torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match=r"model: '0.1.running_mean' is on the meta device"):
        nnic.speedup_model(model.eval(), torch.randn(1, 3, 8, 8), {})
    masked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    nnic.masking.attach_masks(masked[0], {"weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)})
    masked[0].parametrizations.weight.original = nn.Parameter(torch.empty(4, 3, 3, 3, device="meta"))
    with pytest.raises(ValueError, match=r"model: '0.parametrizations.weight.original' is on the meta device"):
        nnic.speedup_model(masked.eval(), torch.randn(1, 3, 8, 8), {})


class TiedLM(nn.Module):
    """Embedding -> (optional MLP) -> output layer whose weight is the embedding's (weight tying)."""

    def __init__(self, mlp: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)) if mlp else nn.Identity()
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        hidden = self.mlp(self.emb(ids))
        logits = self.head(hidden)
        return logits if isinstance(self.mlp, nn.Identity) else (logits, hidden)  # hidden: a model output


TOKENS = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1))


def dead_columns(model: TiedLM) -> dict:
    mask = torch.ones_like(model.emb.weight, dtype=torch.bool)
    mask[:, [1, 4, 6]] = False
    return {"emb": {"weight": mask}}


def test_tied_weights_that_shrink_alike_stay_tied():
    model = TiedLM(mlp=False)
    masks = dead_columns(model)
    reference = masked_output(model, TOKENS, masks)
    nnic.speedup_model(model, TOKENS, masks)
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (20, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), reference)


def test_tied_weights_whose_channels_differ_keep_them_and_stay_tied():
    model = TiedLM(mlp=True)
    masks = dead_columns(model)
    params = sum(p.numel() for p in model.parameters())
    reference = masked_output(model, TOKENS, masks)
    # The embedding could lose its dead columns, but the output layer reads the MLP's output, which the model
    # also returns (so none of its channels go): cutting both apart would untie them. The columns are kept.
    nnic.speedup_model(model, TOKENS, masks)
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (20, 8)
    assert sum(p.numel() for p in model.parameters()) <= params
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_verify(dtype):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # trained-looking BatchNorms: removed channels leave constants to fold
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data, m.bias.data = torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g)
            m.running_mean, m.running_var = torch.randn(n, generator=g) * 0.1, torch.rand(n, generator=g) + 0.5
    masks = channel_masks(model, 0.5, types=(nn.Conv2d,))
    model = model.to(dtype).eval()
    x = torch.randn(2, 3, 64, 64, generator=g).to(dtype)
    reference = masked_output(model, x, masks).float()
    nnic.speedup_model(model, x, masks)  # verify=True: raises if the output differs beyond the dtype's tolerance
    assert model.layer1[0].conv1.out_channels < 64 and model.conv1.weight.dtype == dtype
    with torch.no_grad():
        error = float((model(x).float() - reference).abs().max() / reference.abs().max())
    assert error < 0.05  # a few units in the last place of bfloat16; a wrong speedup differs by order 1


def test_a_failed_speedup_puts_back_the_very_parametrization_objects_a_pruner_attached():
    """The fold detaches a pruner's parametrizations whole and speedup's snapshot does not record them: the
    restore must put back the same containers, lists and masks, with their own train/eval flags."""
    class Lying(nnic.speedup.Rule):
        name, targets = "test.lying-mean", (Mean,)

        def propagate(self, call):
            call.sink(call.spec(0).ids, torch.ones(len(call.spec(0)), dtype=torch.bool))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Mean(), nn.Conv2d(1, 2, 1)).eval()
    nnic.pruner("l1norm", model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    objects = [(n, m, m.training) for n, m in model.named_modules()]
    plists = model[0].parametrizations
    assert any(m.training for n, m, _ in objects if "parametrizations" in n)  # torch makes them in train mode
    with pytest.raises(SpeedupError, match="verify"):
        nnic.speedup_model(model, X, rules=[Lying()], leaf_modules=[Mean])
    assert [(n, m, m.training) for n, m in model.named_modules()] == objects
    assert model[0].parametrizations is plists and list(plists.keys()) == ["weight", "bias"]
    assert torch.equal(model[0].weight, model[0].parametrizations.weight.original * plists.weight[0].mask)
