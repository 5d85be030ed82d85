"""The names API.md promises are importable, and class imports equal registry lookups."""

from __future__ import annotations

import pytest

import nnic
import nnic.pruning
import nnic.quantization


@pytest.mark.parametrize("package, kind", [(nnic.pruning, "pruner"), (nnic.quantization, "quantizer")])
def test_every_builtin_class_is_importable_and_is_the_registered_one(package, kind):
    registered = {info.obj for info in nnic.list_plugins(kind) if info.distribution == "nnic"}
    exported = {getattr(package, name) for name in package.__all__ if isinstance(getattr(package, name), type)}
    assert registered <= exported


def test_the_registry_names_of_api_md_exist():
    names = {(i.kind, i.name) for i in nnic.list_plugins()}
    for pruner in ("level", "l1norm", "l2norm", "fpgm", "slim", "taylor", "apoz", "mean_activation", "nm", "agp",
                   "linear", "lottery_ticket", "movement", "admm"):
        assert ("pruner", pruner) in names
    for quantizer in ("naive", "qat", "lsq", "dorefa", "bnn", "ptq"):
        assert ("quantizer", quantizer) in names


def test_unknown_attributes_are_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        nnic.pruning.Nope  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        nnic.nope  # noqa: B018
