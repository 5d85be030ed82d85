"""Masks attached by nnic are torch parametrizations, built the fast way where that gives the very structure
torch's ``register_parametrization`` builds, and folded the fast way where that gives what torch's
``remove_parametrizations`` leaves: the same modules, classes, state-dict keys, values and behaviour."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from nnic.masking import (ParameterMask, attach_masks, current_mask, fold_masks, only_masks_test, plain_state_dict,
                          zero_masked_)


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 30 * 30, 5))


def masks_for(m: nn.Sequential) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {"0": {"weight": torch.rand(m[0].weight.shape, generator=g) < 0.5,
                  "bias": torch.rand(m[0].bias.shape, generator=g) < 0.5},
            "1": {"weight": torch.rand(8, generator=g) < 0.5, "bias": torch.rand(8, generator=g) < 0.5},
            "4": {"weight": torch.rand(m[4].weight.shape, generator=g) < 0.5}}


def torch_attach(m: nn.Module, masks) -> None:
    """What attaching a mask did before the fast path: torch's function, then the stored values zeroed."""
    for layer, per_param in masks.items():
        module = m.get_submodule(layer)
        for name, mask in per_param.items():
            parametrize.register_parametrization(module, name, ParameterMask(mask), unsafe=True)
            with torch.no_grad():
                zero_masked_(module.parametrizations[name].original.data, mask)


def torch_fold(m: nn.Module) -> None:
    for module in list(m.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                plist = module.parametrizations[name]
                with torch.no_grad():
                    zero_masked_(plist.original.data, plist[0].mask)
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)


def structure(m: nn.Module) -> list:
    """Every module's name, class (its name, bases and own attribute names), plain attributes and the keys of
    its containers, in order; then the state dict's keys, in order."""
    out = []
    for name, module in m.named_modules():
        cls = type(module)
        plain = {k: v for k, v in vars(module).items() if not isinstance(v, (dict, set, list, torch.Tensor))}
        containers = {k: list(v) for k, v in vars(module).items() if isinstance(v, (dict, set, list))}
        out.append((name, cls.__name__, [b.__name__ for b in cls.__bases__], sorted(vars(cls)), plain, containers))
    out.append(list(m.state_dict()))
    return out


def attached_both_ways() -> tuple[nn.Sequential, nn.Sequential, dict[str, dict[str, torch.Tensor]]]:
    """Two equal models, the same masks attached by :func:`attach_masks` to the first and by torch's
    ``register_parametrization`` to the second."""
    fast, slow = model(), model()
    masks = masks_for(fast)
    for layer, per_param in masks.items():
        attach_masks(fast.get_submodule(layer), per_param)
    torch_attach(slow, masks)
    return fast, slow, masks


def assert_same_state(fast: nn.Module, slow: nn.Module) -> None:
    """The two models' state dicts hold equal tensors, key by key in order (the keys are compared by structure)."""
    for (k, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        assert torch.equal(a, b), k


def test_attaching_builds_what_torchs_register_parametrization_builds():
    fast, slow, masks = attached_both_ways()
    assert structure(fast) == structure(slow)
    assert_same_state(fast, slow)
    for layer, per_param in masks.items():  # every read is masked; the stored values are zero under the mask
        for name, mask in per_param.items():
            module = fast.get_submodule(layer)
            assert torch.equal(getattr(module, name) != 0, mask & (module.parametrizations[name].original != 0))
            assert bool((module.parametrizations[name].original[~mask] == 0).all())
            assert current_mask(module, name) is not None and torch.equal(current_mask(module, name), mask)


def test_the_fast_attachment_trains_deepcopies_and_composes_like_torchs():
    fast, slow, masks = attached_both_ways()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fast.train(), slow.train()
    for m in (fast, slow):  # one SGD step with momentum and weight decay: masked weights stay zero
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        m(x).square().sum().backward()
        opt.step()
    assert structure(fast) == structure(slow)
    assert_same_state(fast, slow)
    assert bool((fast[0].parametrizations.weight.original[~masks["0"]["weight"]] == 0).all())
    twin = copy.deepcopy(fast)
    assert torch.equal(twin(x), fast(x)) and structure(twin) == structure(fast)
    assert type(fast[0]) is not type(fast[1])  # a class per module, as torch makes: one removal touches one module
    parametrize.remove_parametrizations(fast[0], "weight")
    assert parametrize.is_parametrized(fast[1], "weight") and torch.equal(fast[1].weight, slow[1].weight)
    parametrize.register_parametrization(fast[4], "bias", nn.Identity())  # another parametrization on top
    assert torch.equal(fast[4].bias, fast[4].parametrizations.bias.original)
    assert set(plain_state_dict(fast)) == set(model().state_dict())


def test_folding_leaves_what_torchs_remove_parametrizations_leaves():
    fast, slow = model(), model()
    masks = masks_for(fast)
    for m in (fast, slow):
        torch_attach(m, masks)
        with torch.no_grad():  # a write into a stored value under a mask, which folding must zero again
            m[0].parametrizations.weight.original.add_(1.0)
    assert all(only_masks_test()(m) for m in fast.modules() if parametrize.is_parametrized(m))  # the fast fold, compared
    folded = {name: fold_masks(module) for name, module in fast.named_modules()}
    torch_fold(slow)
    assert structure(fast) == structure(slow)  # the folded parameters registered last, in the same order
    assert_same_state(fast, slow)
    assert [type(m) for m in fast.modules()] == [type(m) for m in model().modules()]
    assert {n: [p for p, _ in f] for n, f in folded.items() if f} == {k: list(v) for k, v in masks.items()}
    assert all(torch.equal(f[0][1][0], masks["1"]["weight"]) for n, f in folded.items() if n == "1")


def test_a_global_registration_hook_sees_the_registrations_torch_makes():
    from torch.nn.modules.module import register_module_parameter_registration_hook

    seen: list[str] = []
    m = nn.Linear(4, 3)
    handle = register_module_parameter_registration_hook(lambda module, name, p: seen.append(name))
    try:
        attach_masks(m, {"weight": torch.ones(3, 4, dtype=torch.bool).tril()})
        fold_masks(m)
    finally:
        handle.remove()
    assert seen == ["original", "weight"]  # the parametrization's original, then the folded weight


def test_only_masks_test_accepts_masks_alone_on_plain_parameters_and_nothing_under_a_registration_hook():
    from torch.nn.modules.module import register_module_parameter_registration_hook

    masked, other, plain = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    attach_masks(masked, {"weight": torch.ones(3, 4, dtype=torch.bool).tril()})
    attach_masks(other, {"weight": torch.ones(3, 4, dtype=torch.bool).tril()})
    parametrize.register_parametrization(other, "weight", nn.Identity())  # a second step on the masked weight
    test = only_masks_test()
    assert test(masked) and not test(other) and not test(plain)
    handle = register_module_parameter_registration_hook(lambda module, name, p: None)
    try:
        assert not only_masks_test()(masked)  # the hook would see the folded weight registered again
    finally:
        handle.remove()
    assert only_masks_test()(masked)


@pytest.mark.parametrize("already", ["masked", "other"])
def test_a_module_already_parametrized_gets_torchs_path(already):
    m = nn.Linear(4, 3)
    first = torch.ones(3, 4, dtype=torch.bool).tril()
    if already == "masked":
        attach_masks(m, {"weight": first})
    else:
        parametrize.register_parametrization(m, "bias", nn.Identity())
    second = torch.ones(3, 4, dtype=torch.bool).triu()
    attach_masks(m, {"weight": second})
    assert [type(p) for p in m.parametrizations.weight] == [ParameterMask]
    assert torch.equal(current_mask(m, "weight"), second)
    assert bool((m.weight[~second] == 0).all())


def test_a_module_with_its_own_setattr_sees_what_torchs_path_sets():
    class Watched(nn.Linear):
        def __setattr__(self, name, value):
            if name == "parametrizations":
                self.__dict__.setdefault("seen", []).append(name)
            super().__setattr__(name, value)

    m = Watched(4, 3)
    attach_masks(m, {"weight": torch.ones(3, 4, dtype=torch.bool).tril()})
    assert m.seen == ["parametrizations"] and parametrize.is_parametrized(m, "weight")
    fold_masks(m)
    assert type(m) is Watched and not parametrize.is_parametrized(m)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_compress_then_speedup_gives_what_torchs_attachment_gave(arch):
    """The pruner's masks attached the fast way and through torch's function, then speedup: the same masked
    state dicts (keys in order, values) and outputs, and the same pruned models."""
    import torchvision

    import nnic

    torch.manual_seed(0)
    dense = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    cfg = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
           {"exclude": True, "op_names": ["fc" if arch == "resnet18" else "classifier.3"]}]
    results = []
    for fast in (True, False):
        model = copy.deepcopy(dense)
        pruner = nnic.pruner("l1norm", model, cfg, dependency_aware=True, dummy_input=x)
        if fast:
            _, masks = pruner.compress()
        else:
            masks = pruner.checked_masks()
            torch_attach(model, {k: {n: m for n, m in v.items() if m is not None} for k, v in masks.items()})
        masked_state = model.state_dict()
        with torch.no_grad():
            masked_out = model(x)
        nnic.ModelSpeedup(model, x, masks).speedup_model()
        with torch.no_grad():
            results.append((masked_state, masked_out, model.state_dict(), model(x)))
    (ms_a, mo_a, ps_a, po_a), (ms_b, mo_b, ps_b, po_b) = results
    assert list(ms_a) == list(ms_b) and all(torch.equal(ms_a[k], ms_b[k]) for k in ms_a)
    assert torch.equal(mo_a, mo_b)
    assert list(ps_a) == list(ps_b) and all(torch.equal(ps_a[k], ps_b[k]) for k in ps_a)
    assert torch.equal(po_a, po_b)
    assert sum(v.numel() for v in ps_a.values()) < 0.8 * sum(v.numel() for v in dense.state_dict().values())


def test_folding_detaches_the_parametrization_containers_unchanged():
    """What speedup's snapshot relies on to restore a folded module without recording its parametrizations."""
    fast, _, masks = attached_both_ways()
    plists = fast[0].parametrizations
    lists = dict(plists.items())
    originals = {name: plist.original for name, plist in lists.items()}
    fold_masks(fast[0])
    assert "parametrizations" not in fast[0]._modules
    assert dict(plists.items()) == lists  # the same lists, each with its original and mask
    assert all(plist.original is originals[name] and torch.equal(plist[0].mask, masks["0"][name])
               for name, plist in lists.items())
    assert all(getattr(fast[0], name) is originals[name] for name in lists)
