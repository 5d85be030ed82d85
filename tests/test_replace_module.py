"""``nnic.selection.replace_module``: the one edit of a module tree by dotted name that speedup, lowering,
sparsify, export and loading share."""

import pytest
from torch import nn

from nnic.selection import replace_module


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 4)))


def test_a_top_level_child_is_replaced_in_place_of_the_old_one():
    model, new = _model(), nn.Identity()
    replace_module(model, "0", new)
    assert model[0] is new and [n for n, _ in model.named_children()] == ["0", "1"]


def test_a_nested_child_is_replaced_and_its_siblings_are_untouched():
    model, new = _model(), nn.Linear(3, 5)
    relu = model[1][0]
    replace_module(model, "1.1", new)
    assert model.get_submodule("1.1") is new and model[1][0] is relu


def test_a_name_the_model_does_not_have_names_the_missing_part():
    with pytest.raises(AttributeError, match="nope"):
        replace_module(_model(), "nope.0", nn.Identity())
