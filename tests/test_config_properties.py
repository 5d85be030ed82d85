"""Property tests for nnic.config: any config_list either validates or fails with a located message."""

from __future__ import annotations

import copy
import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nnic.config import QUANT_SCHEMES, QUANT_TYPES, validate_config_list
from nnic.selection import select_layers

# max_examples comes from the profile tests/conftest.py loads (dev 50, ci 200, deep 2000).
PROFILE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Linear(4, 4))
        self.fc = nn.Linear(4, 2)
        self.emb = nn.Embedding(5, 4)


MODEL = Net()
MODULE_NAMES = [n for n, _ in MODEL.named_modules()]
LAYER_NAMES = [n for n, m in MODEL.named_modules() if next(m.parameters(recurse=False), None) is not None]

# A located message: "config_list[i]...", "config_list: ..." or "config_list selects no layer ...".
LOCATED = re.compile(r"^config_list(\[\d+\](\['[^']*'\])*: |\[\d+\] selects no layer |: | selects no layer )")

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -10**400]) | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
unit = st.floats(0, 1)
quant_types = st.lists(st.sampled_from(QUANT_TYPES), min_size=1, max_size=3, unique=True)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 9).flatmap(lambda n: invalid if n == 0 else valid)


def per_type(values: st.SearchStrategy) -> st.SearchStrategy:
    return mostly(values, st.dictionaries(st.sampled_from(QUANT_TYPES), values, max_size=3))


VALID = {
    "op_types": st.lists(st.sampled_from(["Linear", "Conv2d", "BatchNorm2d", "ReLU", "default", "GRU"]),
                         min_size=1, max_size=3),
    "op_names": st.lists(st.sampled_from(MODULE_NAMES + ["nope"]), min_size=1, max_size=3),
    "op_partial_names": st.lists(st.sampled_from(["conv", "block", "fc", "1", "x"]), min_size=1, max_size=2),
    "exclude": st.booleans(),
    "sparsity": st.floats(0, 1, exclude_max=True) | unit,
    "sparsity_per_layer": unit,
    "total_sparsity": st.floats(0, 0.5),
    "max_sparsity_per_layer": unit | st.dictionaries(st.sampled_from(MODULE_NAMES + ["nope"]), unit, max_size=2),
    "quant_types": quant_types,
    "quant_bits": per_type(mostly(st.integers(1, 32), st.integers(-1, 40))),
    "quant_dtype": per_type(mostly(st.sampled_from(["int", "uint"]), st.just("float"))),
    "quant_scheme": per_type(mostly(st.sampled_from(QUANT_SCHEMES), st.just("symmetric"))),
    "granularity": per_type(mostly(st.sampled_from(["default", "per_tensor", "per_channel", 32]),
                                   st.sampled_from(["per_group", 0]))),
}
ODD_KEYS = st.sampled_from(["sparsty", "quant_bit", "", "n", *VALID]) | st.text(max_size=4) | st.integers(0, 3)
OPTIONAL = {"pruner": ["max_sparsity_per_layer"], "quantizer": ["quant_dtype", "quant_scheme", "granularity"]}


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


@st.composite
def entries(draw: st.DrawFn, kind: str) -> object:
    """Mostly plausible entries of the kind; now and then an odd key, a junk value, or junk for the entry."""
    if rarely(draw, 60):
        return draw(junk)
    keys = draw(st.lists(st.sampled_from(["op_types", "op_names", "op_partial_names", "exclude"]), min_size=1,
                         max_size=2, unique=True))
    if not rarely(draw, 8):  # the keys an entry of this kind needs
        keys += ([draw(st.sampled_from(["sparsity", "sparsity_per_layer", "total_sparsity"]))] if kind == "pruner"
                 else ["quant_types", "quant_bits"])
    if kind == "quantizer" or "total_sparsity" in keys or rarely(draw, 8):
        keys += draw(st.lists(st.sampled_from(OPTIONAL[kind]), max_size=2, unique=True))
    if rarely(draw, 15):
        keys.append(draw(ODD_KEYS))
    return {key: draw(junk if rarely(draw, 40) else VALID.get(key, junk)) for key in keys}


def config_lists(kind: str) -> st.SearchStrategy:
    return st.integers(0, 9).flatmap(lambda n: junk if n == 0 else st.lists(entries(kind), max_size=4))


kinds_and_lists = st.sampled_from(["pruner", "quantizer"]).flatmap(lambda k: st.tuples(st.just(k), config_lists(k)))


def assert_located(error: Exception) -> None:
    assert isinstance(error, (TypeError, ValueError))
    assert LOCATED.match(str(error)), str(error)


@PROFILE
@given(kinds_and_lists)
def test_any_config_list_validates_or_fails_with_a_located_message(kind_and_list):
    kind, config_list = kind_and_list
    before = copy.deepcopy(config_list)
    try:
        out = validate_config_list(config_list, kind)
    except (TypeError, ValueError) as error:
        assert_located(error)
    else:
        assert isinstance(out, list) and all(isinstance(e, dict) for e in out)
        assert validate_config_list(out, kind) == out  # normalisation is idempotent
    # nan != nan, so compare reprs to check the input was left alone
    assert repr(config_list) == repr(before)


@PROFILE
@given(kinds_and_lists)
def test_any_config_list_selects_or_fails_with_a_located_message(kind_and_list):
    kind, config_list = kind_and_list
    try:
        selected = select_layers(MODEL, config_list, kind)
    except (TypeError, ValueError) as error:
        assert_located(error)
    else:
        assert selected and list(selected) == [n for n in MODULE_NAMES if n in selected]
        for name, layer in selected.items():
            assert layer.name == name and layer.module is MODEL.get_submodule(name)
            assert not layer.config.get("exclude", False)


@st.composite
def valid_pruning_lists(draw: st.DrawFn) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        entry = {"sparsity": draw(st.floats(0, 1, exclude_max=True))}
        for key, values in (("op_types", ["Linear", "Conv2d", "default"]), ("op_partial_names", ["conv", "block"])):
            if draw(st.booleans()):
                entry[key] = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2))
        if len(entry) == 1:
            entry["op_names"] = draw(st.lists(st.sampled_from(LAYER_NAMES), min_size=1, max_size=2))
        out.append(entry)
    return out


def select_or_none(config_list: list[dict]) -> dict | None:
    try:
        return select_layers(MODEL, config_list, "pruner")
    except ValueError as error:
        assert_located(error)
        return None


@PROFILE
@given(valid_pruning_lists(), st.sampled_from(LAYER_NAMES))
def test_appending_an_exclude_entry_removes_exactly_that_layer(config_list, name):
    before = select_or_none(config_list)
    after = select_or_none(config_list + [{"exclude": True, "op_names": [name]}])
    if before is not None:
        expected = {n: c.entry_index for n, c in before.items() if n != name}
        assert (after is None) == (not expected)
        assert after is None or {n: c.entry_index for n, c in after.items()} == expected


@PROFILE
@given(valid_pruning_lists(), st.sampled_from(LAYER_NAMES), st.floats(0, 1, exclude_max=True))
def test_appending_an_entry_makes_it_win_for_its_layer(config_list, name, sparsity):
    before = select_or_none(config_list)
    after = select_or_none(config_list + [{"sparsity": sparsity, "op_names": [name]}])
    if before is not None:
        assert after is not None
        assert after[name].entry_index == len(config_list) and after[name].config["sparsity"] == sparsity
        assert {n: c.entry_index for n, c in after.items() if n != name} == {
            n: c.entry_index for n, c in before.items() if n != name}


@PROFILE
@given(quant_types, st.integers(1, 32), st.sampled_from(["int", "uint"]))
def test_quant_values_expand_to_exactly_the_entry_quant_types(types, bits, dtype):
    entry = validate_config_list([{"op_types": ["Linear"], "quant_types": types, "quant_bits": bits,
                                   "quant_dtype": {types[0]: dtype}}], "quantizer")[0]
    for key in ("quant_bits", "quant_dtype", "quant_scheme", "granularity"):
        assert list(entry[key]) == types
    assert entry["quant_bits"] == dict.fromkeys(types, bits)
    assert entry["quant_dtype"][types[0]] == dtype


@PROFILE
@given(st.floats() | st.integers(-5, 5) | st.integers() | st.sampled_from([10**400, -10**400]))
def test_sparsity_is_accepted_exactly_in_zero_one(value):
    try:
        out = validate_config_list([{"op_types": ["Linear"], "sparsity": value}], "pruner")
    except ValueError as error:
        assert not (0 <= value < 1)
        assert str(error).startswith("config_list[0]['sparsity']: expected a float in [0, 1), got ")
    else:
        assert 0 <= value < 1 and not math.isnan(value) and out[0]["sparsity"] == value
