"""Specification of config_list handling (nnic.config): one test per rule, messages included.

Error messages are part of the product, so every error test pins the message with ``match=``.
"""

from __future__ import annotations

import math
import re

import pytest
from torch import nn

from nnic.config import DEFAULT_OP_TYPES, PRUNING_KEYS, QUANTIZATION_KEYS, SELECTION_KEYS, Key, bool_key, choice_key, float_key, int_key, validate_config_list
from nnic.selection import LayerConfig, select_layers


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)


class Net(nn.Module):
    """named_modules: '', conv1, bn1, block, block.conv, block.bn, relu, fc, emb, head, head.0, head.1, head.2"""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = Block()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 10)
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))


@pytest.fixture
def net() -> Net:
    return Net()


def prune(model: nn.Module, *entries: dict, **kw) -> dict[str, LayerConfig]:
    return select_layers(model, list(entries), "pruner", **kw)


def names(selected: dict[str, LayerConfig]) -> list[str]:
    return list(selected)


# --------------------------------------------------------------------------------------------- config_list shape

@pytest.mark.parametrize("bad", [{"sparsity": 0.5}, "sparsity", None, 3])
def test_config_list_must_be_a_list(bad):
    with pytest.raises(TypeError, match=r"^config_list: expected a list of dicts, got "):
        validate_config_list(bad, "pruner")


def test_each_entry_must_be_a_dict():
    with pytest.raises(TypeError, match=r"^config_list\[1\]: expected a dict, got \['op_types'\]"):
        validate_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}, ["op_types"]], "pruner")


def test_empty_config_list_is_rejected():
    with pytest.raises(ValueError, match=r"^config_list: expected at least one entry, got \[\]"):
        validate_config_list([], "pruner")


def test_kind_must_be_pruning_or_quantization():
    with pytest.raises(ValueError, match=r"^kind: expected 'pruner' or 'quantizer', got 'prune'"):
        validate_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}], "prune")


def test_keys_must_be_strings():
    with pytest.raises(TypeError, match=r"^config_list\[0\]: expected str keys, got 1"):
        validate_config_list([{"op_types": ["Linear"], 1: 0.5}], "pruner")


# ------------------------------------------------------------------------------------------------- unknown keys

def test_unknown_key_is_named_with_a_suggestion_and_the_allowed_keys():
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]: unknown key 'sparsty' (did you mean 'sparsity' or 'total_sparsity'?); allowed keys: "
            "exclude, max_sparsity_per_layer, op_names, op_partial_names, op_types, sparsity, sparsity_per_layer, "
            "total_sparsity")):
        validate_config_list([{"op_types": ["Linear"], "sparsty": 0.5}], "pruner")


def test_key_of_the_other_kind_says_so():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: unknown key 'quant_bits' \('quant_bits' is a "
                                         r"quantizer key; this is a pruner config_list\)"):
        validate_config_list([{"op_types": ["Linear"], "sparsity": 0.5, "quant_bits": 8}], "pruner")
    with pytest.raises(ValueError, match=r"unknown key 'sparsity' \('sparsity' is a pruner key"):
        validate_config_list([{"op_types": ["Linear"], "quant_types": ["weight"], "quant_bits": 8,
                               "sparsity": 0.5}], "quantizer")


# ---------------------------------------------------------------------------------------------- selection keys

def test_entry_needs_at_least_one_selector():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: expected at least one of 'op_types', 'op_names', "
                                         r"'op_partial_names', got keys \['sparsity'\]"):
        validate_config_list([{"sparsity": 0.5}], "pruner")


def test_op_types_given_as_a_bare_string_is_a_type_error():
    with pytest.raises(TypeError, match=r"^config_list\[0\]\['op_types'\]: expected a non-empty list of module "
                                        r"class names \(str\), got 'Linear'"):
        validate_config_list([{"sparsity": 0.5, "op_types": "Linear"}], "pruner")


@pytest.mark.parametrize("key", ["op_types", "op_names", "op_partial_names"])
def test_selector_lists_must_be_non_empty_lists_of_str(key):
    with pytest.raises(ValueError, match=rf"^config_list\[0\]\['{key}'\]: expected a non-empty list .*, got \[\]"):
        validate_config_list([{"sparsity": 0.5, key: []}], "pruner")
    with pytest.raises(TypeError, match=rf"^config_list\[0\]\['{key}'\]: expected a non-empty list .*, got \[1\]"):
        validate_config_list([{"sparsity": 0.5, key: [1]}], "pruner")


def test_exclude_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^config_list\[0\]\['exclude'\]: expected a bool, got 1"):
        validate_config_list([{"op_types": ["Linear"], "exclude": 1}], "pruner")


# ------------------------------------------------------------------------------------------------- pruning keys

def test_valid_pruning_entry_is_normalised():
    given = [{"sparsity_per_layer": 0, "op_types": ("Linear",)}, {"total_sparsity": 0.5, "op_names": ["fc"],
                                                                  "max_sparsity_per_layer": 1}]
    assert validate_config_list(given, "pruner") == [
        {"sparsity": 0.0, "op_types": ["Linear"]},
        {"total_sparsity": 0.5, "op_names": ["fc"], "max_sparsity_per_layer": 1.0},
    ]
    out = validate_config_list(given, "pruner")
    assert type(out[0]["sparsity"]) is float and type(out[0]["op_types"]) is list


def test_tuples_and_mappings_are_accepted_and_normalised_to_lists_and_dicts():
    from types import MappingProxyType
    out = validate_config_list(({"sparsity": 0.5, "op_types": ["Linear"]},
                                MappingProxyType({"exclude": True, "op_names": ("fc",)})), "pruner")
    assert out == [{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["fc"]}]
    assert type(out[1]) is dict


def test_returns_deep_copies_and_leaves_the_input_alone():
    given = [{"sparsity": 0.5, "op_names": ["fc"]}]
    out = validate_config_list(given, "pruner")
    out[0]["op_names"].append("conv1")
    assert given == [{"sparsity": 0.5, "op_names": ["fc"]}]


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan, math.inf])
def test_sparsity_must_be_in_zero_one(value):
    with pytest.raises(ValueError, match=re.escape(
            f"config_list[1]['sparsity']: expected a float in [0, 1), got {value!r}")):
        validate_config_list([{"sparsity": 0.1, "op_types": ["Linear"]}, {"sparsity": value, "op_names": ["fc"]}],
                             "pruner")


@pytest.mark.parametrize("key, value", [("sparsity", 10**400), ("quant_bits", 10**400)])
def test_huge_ints_are_out_of_range_not_a_crash(key, value):
    kind, entry = ("pruner", {}) if key == "sparsity" else ("quantizer", {"quant_types": ["weight"]})
    with pytest.raises(ValueError, match=rf"^config_list\[0\]\['{key}'\]: expected .*, got 1000000"):
        validate_config_list([{"op_types": ["Linear"], **entry, key: value}], kind)


def test_alias_is_named_as_written_in_errors():
    with pytest.raises(ValueError, match=re.escape("config_list[0]['sparsity_per_layer']: expected a float in "
                                                   "[0, 1), got 1.5")):
        validate_config_list([{"sparsity_per_layer": 1.5, "op_types": ["Linear"]}], "pruner")


def test_bool_is_not_a_number():
    with pytest.raises(TypeError, match=r"^config_list\[0\]\['sparsity'\]: expected a float in \[0, 1\), got True"):
        validate_config_list([{"sparsity": True, "op_types": ["Linear"]}], "pruner")


def test_string_sparsity_is_a_type_error():
    with pytest.raises(TypeError, match=r"^config_list\[0\]\['total_sparsity'\]: expected a float in \[0, 1\), "
                                        r"got '0.5'"):
        validate_config_list([{"total_sparsity": "0.5", "op_types": ["Linear"]}], "pruner")


def test_pruning_entry_needs_sparsity_or_total_sparsity():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: missing required key 'sparsity' \(or "
                                         r"'total_sparsity'\); an entry that only selects layers needs "
                                         r"'exclude': True"):
        validate_config_list([{"op_types": ["Linear"]}], "pruner")


def test_exclude_entry_needs_no_sparsity():
    out = validate_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["fc"]}],
                               "pruner")
    assert out[1] == {"exclude": True, "op_names": ["fc"]}


def test_exclude_false_entry_still_needs_sparsity():
    with pytest.raises(ValueError, match=r"config_list\[0\]: missing required key 'sparsity'"):
        validate_config_list([{"op_types": ["Linear"], "exclude": False}], "pruner")


def test_sparsity_and_total_sparsity_are_exclusive():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: expected one of 'sparsity' and 'total_sparsity', "
                                         r"got both"):
        validate_config_list([{"sparsity": 0.5, "total_sparsity": 0.5, "op_types": ["Linear"]}], "pruner")


def test_sparsity_and_its_alias_together_are_rejected():
    message = r"^config_list\[0\]: 'sparsity' and its alias 'sparsity_per_layer' are both given; use only 'sparsity'"
    with pytest.raises(ValueError, match=message):
        validate_config_list([{"sparsity": 0.5, "sparsity_per_layer": 0.5, "op_types": ["Linear"]}], "pruner")
    with pytest.raises(ValueError, match=message):
        validate_config_list([{"sparsity_per_layer": 0.5, "sparsity": 0.5, "op_types": ["Linear"]}], "pruner")


def test_max_sparsity_per_layer_requires_total_sparsity():
    with pytest.raises(ValueError, match=r"^config_list\[0\]\['max_sparsity_per_layer'\]: expected "
                                         r"'total_sparsity' in the same entry"):
        validate_config_list([{"sparsity": 0.5, "max_sparsity_per_layer": 0.9, "op_types": ["Linear"]}], "pruner")


def test_max_sparsity_per_layer_below_total_sparsity_is_rejected():
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]['max_sparsity_per_layer']: expected a float in [0.6, 1] (at least the entry's "
            "total_sparsity), got 0.5")):
        validate_config_list([{"total_sparsity": 0.6, "max_sparsity_per_layer": 0.5, "op_types": ["Linear"]}],
                             "pruner")


@pytest.mark.parametrize("cap", [0, 1.01, {"fc": 0.0}, {"fc": "0.9"}])
def test_max_sparsity_per_layer_is_in_zero_one_closed_or_a_dict_of_them(cap):
    with pytest.raises((ValueError, TypeError), match=re.escape(
            "config_list[0]['max_sparsity_per_layer']: expected a float in (0, 1] or a dict {op_name: float in "
            "(0, 1]}, got ")):
        validate_config_list([{"total_sparsity": 0.5, "max_sparsity_per_layer": cap, "op_types": ["Linear"]}],
                             "pruner")


def test_max_sparsity_per_layer_dict_is_kept():
    out = validate_config_list([{"total_sparsity": 0.5, "max_sparsity_per_layer": {"fc": 1, "conv1": 0.7},
                                 "op_types": ["default"]}], "pruner")
    assert out[0]["max_sparsity_per_layer"] == {"fc": 1.0, "conv1": 0.7}


# -------------------------------------------------------------------------------------------- quantization keys

def quantize(entry: dict, **kw) -> dict:
    return validate_config_list([entry], "quantizer", **kw)[0]


def test_quant_values_are_expanded_per_quant_type_with_defaults():
    assert quantize({"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Linear"]}) == {
        "quant_types": ["weight", "output"],
        "quant_bits": {"weight": 8, "output": 8},
        "op_types": ["Linear"],
        "quant_dtype": {"weight": "int", "output": "int"},
        "quant_scheme": {"weight": "per_tensor_symmetric", "output": "per_tensor_symmetric"},
        "granularity": {"weight": "default", "output": "default"},
    }


def test_quant_dicts_fill_missing_types_with_defaults():
    out = quantize({"op_types": ["Linear"], "quant_bits": {"weight": 4, "input": 8},
                    "quant_types": ["weight", "input"], "quant_dtype": {"input": "uint"},
                    "quant_scheme": "per_channel_affine", "granularity": {"weight": 64}})
    assert out["quant_bits"] == {"weight": 4, "input": 8}
    assert out["quant_dtype"] == {"weight": "int", "input": "uint"}
    assert out["quant_scheme"] == {"weight": "per_channel_affine", "input": "per_channel_affine"}
    assert out["granularity"] == {"weight": 64, "input": "default"}


def test_quant_entry_needs_quant_types():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: missing required key 'quant_types'"):
        quantize({"op_types": ["Linear"]})


def test_quant_bits_without_quant_types_is_rejected():
    with pytest.raises(ValueError, match=r"^config_list\[0\]\['quant_bits'\]: expected 'quant_types' in the same "
                                         r"entry, got 8 without it"):
        quantize({"op_types": ["Linear"], "quant_bits": 8})


def test_every_quant_type_needs_bits():
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]['quant_bits']: expected a value for every quant type in ['weight', 'input'], got "
            "{'weight': 8} (missing 'input')")):
        quantize({"op_types": ["Linear"], "quant_types": ["weight", "input"], "quant_bits": {"weight": 8}})
    with pytest.raises(ValueError, match=r"^config_list\[0\]: missing required key 'quant_bits' \(an int in "
                                         r"\[1, 32\] for each of \['weight'\]\)"):
        quantize({"op_types": ["Linear"], "quant_types": ["weight"]})


def test_quant_bits_dict_naming_a_type_not_in_quant_types_is_rejected():
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]['quant_bits']: expected a dict keyed by quant_types ['weight'], got key 'output'")):
        quantize({"op_types": ["Linear"], "quant_types": ["weight"], "quant_bits": {"weight": 8, "output": 8}})


@pytest.mark.parametrize("quant_types", [["weight", "bias"], ["weight", "weight"], []])
def test_quant_types_are_distinct_known_types(quant_types):
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]['quant_types']: expected a non-empty list of distinct quant types from 'weight', "
            f"'input', 'output', got {quant_types!r}")):
        quantize({"op_types": ["Linear"], "quant_types": quant_types, "quant_bits": 8})


@pytest.mark.parametrize("key, value, error, message", [
    ("quant_bits", 0, ValueError, "['quant_bits']: expected an int in [1, 32] or a dict {quant_type: value}, got 0"),
    ("quant_bits", 8.0, TypeError, "['quant_bits']: expected an int in [1, 32] or a dict"),
    ("quant_bits", True, TypeError, "['quant_bits']: expected an int in [1, 32] or a dict"),
    ("quant_bits", {"weight": 33}, ValueError, "['quant_bits']['weight']: expected an int in [1, 32], got 33"),
    ("quant_dtype", "float", ValueError, "['quant_dtype']: expected one of 'int', 'uint' or a dict"),
    ("quant_scheme", {"weight": "symmetric"}, ValueError,
     "['quant_scheme']['weight']: expected one of 'per_tensor_symmetric', 'per_tensor_affine', "
     "'per_channel_symmetric', 'per_channel_affine', got 'symmetric'"),
    ("granularity", 0, ValueError, "['granularity']: expected 'default', 'per_tensor', 'per_channel' or an int "
                                   "group size > 0 or a dict {quant_type: value}, got 0"),
    ("granularity", "per_group", ValueError, "['granularity']: expected 'default'"),
])
def test_quant_values_are_checked(key, value, error, message):
    entry = {"op_types": ["Linear"], "quant_types": ["weight"], "quant_bits": 8, key: value}
    with pytest.raises(error, match="^" + re.escape("config_list[0]" + message)):
        quantize(entry)


def test_quant_exclude_entry_needs_no_quant_types():
    assert quantize({"exclude": True, "op_types": ["Linear"]}) == {"exclude": True, "op_types": ["Linear"]}


# ---------------------------------------------------------------------------------------------- extensibility

def test_key_tuples_describe_the_builtin_schema():
    assert [k.name for k in SELECTION_KEYS] == ["op_types", "op_names", "op_partial_names", "exclude"]
    assert [k.name for k in PRUNING_KEYS] == ["sparsity", "total_sparsity", "max_sparsity_per_layer"]
    assert PRUNING_KEYS[0].aliases == ("sparsity_per_layer",)
    assert [k.name for k in QUANTIZATION_KEYS] == ["quant_types", "quant_bits", "quant_dtype", "quant_scheme",
                                                   "granularity"]


NM_KEYS = (int_key("n", lo=1, required=True), int_key("m", lo=1, required=True))


def test_plugin_keys_are_accepted_and_checked():
    out = validate_config_list([{"op_types": ["Linear"], "n": 2, "m": 4}], "pruner", extra_keys=NM_KEYS,
                               require_sparsity=False)
    assert out == [{"op_types": ["Linear"], "n": 2, "m": 4}]
    with pytest.raises(ValueError, match=re.escape("config_list[0]['m']: expected an int in [1, inf), got 0")):
        validate_config_list([{"op_types": ["Linear"], "n": 2, "m": 0}], "pruner", extra_keys=NM_KEYS,
                             require_sparsity=False)


def test_required_plugin_key_must_be_given():
    with pytest.raises(ValueError, match=re.escape("config_list[0]: missing required key 'm' (an int in [1, inf))")):
        validate_config_list([{"op_types": ["Linear"], "n": 2}], "pruner", extra_keys=NM_KEYS,
                             require_sparsity=False)


def test_plugin_key_default_is_filled():
    keys = (bool_key("dependency_aware", default=False), choice_key("mode", ("normal", "global"), default="normal"))
    out = validate_config_list([{"op_types": ["Conv2d"], "sparsity": 0.5, "mode": "global"}], "pruner",
                               extra_keys=keys)
    assert out[0] == {"op_types": ["Conv2d"], "sparsity": 0.5, "mode": "global", "dependency_aware": False}


def test_plugin_key_can_be_per_quant_type():
    bins = int_key("observer_bins", lo=1, default=2048, per_quant_type=True)
    out = quantize({"op_types": ["Linear"], "quant_types": ["weight", "output"], "quant_bits": 8,
                    "observer_bins": {"output": 512}}, extra_keys=(bins,))
    assert out["observer_bins"] == {"weight": 2048, "output": 512}


def test_plugin_keys_are_unknown_without_extra_keys():
    with pytest.raises(ValueError, match=r"^config_list\[0\]: unknown key 'n'"):
        validate_config_list([{"op_types": ["Linear"], "sparsity": 0.5, "n": 2}], "pruner")


def test_plugin_can_narrow_a_builtin_key():
    bits_2_to_8 = (int_key("quant_bits", 2, 8),)
    entry = {"op_types": ["Linear"], "quant_types": ["weight", "input"], "quant_bits": {"weight": 4, "input": 8}}
    assert quantize(entry, extra_keys=bits_2_to_8)["quant_bits"] == {"weight": 4, "input": 8}
    with pytest.raises(ValueError, match=re.escape("config_list[0]['quant_bits']['input']: expected an int in "
                                                   "[2, 8], got 16")):
        quantize({**entry, "quant_bits": {"weight": 4, "input": 16}}, extra_keys=bits_2_to_8)
    with pytest.raises(ValueError, match=r"missing required key 'quant_bits' \(an int in \[2, 8\]"):
        quantize({"op_types": ["Linear"], "quant_types": ["weight"]}, extra_keys=bits_2_to_8)


def test_narrowing_cannot_loosen_a_builtin_key():
    with pytest.raises(ValueError, match=re.escape("config_list[0]['sparsity']: expected a float in [0, 2), got 1.5")):
        validate_config_list([{"sparsity": 1.5, "op_types": ["Linear"]}], "pruner",
                             extra_keys=(float_key("sparsity", 0, 2),))


def test_custom_check_failures_become_standard_errors():
    alpha = Key("alpha", lambda v: v > 0, "a positive number")
    with pytest.raises(TypeError, match=re.escape("config_list[0]['alpha']: expected a positive number, got 'x'")):
        validate_config_list([{"op_types": ["Linear"], "sparsity": 0.5, "alpha": "x"}], "pruner",
                             extra_keys=(alpha,))
    with pytest.raises(ValueError, match=re.escape("config_list[0]['alpha']: expected a positive number, got -1")):
        validate_config_list([{"op_types": ["Linear"], "sparsity": 0.5, "alpha": -1}], "pruner",
                             extra_keys=(alpha,))


@pytest.mark.parametrize("extra, message", [
    ((bool_key("exclude"),), "extra_keys: key 'exclude' is given twice or is a selection key"),
    ((int_key("n"), int_key("n")), "extra_keys: key 'n' is given twice or is a selection key"),
    ((int_key("sparse", aliases=("sparsity_per_layer",)),), "extra_keys: 'sparsity_per_layer' would name two keys"),
])
def test_extra_keys_cannot_clash(extra, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        validate_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}], "pruner", extra_keys=extra)


# -------------------------------------------------------------------------------------------------- selection

def test_default_op_types_are_weighted_torch_nn_modules():
    for name in DEFAULT_OP_TYPES:
        assert issubclass(getattr(nn, name), nn.Module)
    assert "BatchNorm2d" not in DEFAULT_OP_TYPES and "LayerNorm" not in DEFAULT_OP_TYPES


def test_default_selects_weighted_compute_layers_but_not_norms(net):
    assert names(prune(net, {"sparsity": 0.5, "op_types": ["default"]})) == [
        "conv1", "block.conv", "fc", "emb", "head.0", "head.2"]


def test_result_follows_named_modules_order_not_entry_order(net):
    selected = prune(net, {"sparsity": 0.5, "op_names": ["head.2"]}, {"sparsity": 0.5, "op_names": ["conv1"]})
    assert names(selected) == ["conv1", "head.2"]


def test_last_matching_entry_wins(net):
    selected = prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.9, "op_names": ["fc"]})
    assert {n: (c.entry_index, c.config["sparsity"]) for n, c in selected.items()} == {
        "fc": (1, 0.9), "head.0": (0, 0.5), "head.2": (0, 0.5)}


def test_matching_exclude_entry_removes_the_layer(net):
    selected = prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_partial_names": ["head"]})
    assert names(selected) == ["fc"]


def test_a_later_entry_brings_back_an_excluded_layer(net):
    selected = prune(net, {"exclude": True, "op_types": ["Linear"]}, {"sparsity": 0.3, "op_names": ["head.2"]})
    assert names(selected) == ["head.2"]


def test_selectors_within_an_entry_are_anded(net):
    selected = prune(net, {"sparsity": 0.5, "op_types": ["Linear", "Conv2d"], "op_partial_names": ["head", "block"]})
    assert names(selected) == ["block.conv", "head.0", "head.2"]
    assert names(prune(net, {"sparsity": 0.5, "op_types": ["Linear"], "op_names": ["fc", "conv1"]})) == ["fc"]


def test_op_partial_names_match_substrings(net):
    assert names(prune(net, {"sparsity": 0.5, "op_partial_names": ["conv"]})) == ["conv1", "block.conv"]


def test_names_without_op_types_select_only_modules_with_own_parameters(net):
    # 'block' and 'head' are containers; 'head.1' is a ReLU without parameters.
    assert names(prune(net, {"sparsity": 0.5, "op_partial_names": ["block", "head"]})) == [
        "block.conv", "block.bn", "head.0", "head.2"]


def test_op_types_select_modules_without_parameters(net):
    selected = select_layers(net, [{"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"]}],
                             "quantizer")
    assert names(selected) == ["relu", "head.1"]


def test_the_model_itself_can_be_selected():
    model = nn.Linear(4, 4)
    assert names(prune(model, {"sparsity": 0.5, "op_types": ["Linear"]})) == [""]


def test_unknown_op_name_is_an_error_with_close_matches(net):
    with pytest.raises(ValueError, match=re.escape(
            "config_list[1]['op_names']: 'block.conv1' is not a module of Net (did you mean 'block.conv'")):
        prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["block.conv1"]})


def test_unknown_op_name_without_close_match_lists_the_layers(net):
    with pytest.raises(ValueError, match=re.escape("config_list[0]['op_names']: 'classifier' is not a module of Net "
                                                   "(layers with parameters: conv1 (Conv2d), bn1 (BatchNorm2d)")):
        prune(net, {"sparsity": 0.5, "op_names": ["classifier"]})


def test_non_exclude_entry_selecting_nothing_is_an_error(net):
    with pytest.raises(ValueError, match=re.escape(
            "config_list[1] selects no layer of Net: op_types=['Conv3d'] (no module of type 'Conv3d', did you mean "
            "'Conv2d'?); layers with parameters: conv1 (Conv2d), bn1 (BatchNorm2d), block.conv (Conv2d), block.bn "
            "(BatchNorm2d), fc (Linear), emb (Embedding), head.0 (Linear), head.2 (Linear)")):
        prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.5, "op_types": ["Conv3d"]})


def test_misspelt_op_type_gets_a_suggestion(net):
    with pytest.raises(ValueError, match=r"no module of type 'Conv2D', did you mean 'Conv2d'\?"):
        prune(net, {"sparsity": 0.5, "op_types": ["Conv2D"]})


def test_entry_selecting_nothing_reports_all_its_selectors(net):
    with pytest.raises(ValueError, match=re.escape("config_list[0] selects no layer of Net: op_types=['Linear'], "
                                                   "op_partial_names=['block']")):
        prune(net, {"sparsity": 0.5, "op_types": ["Linear"], "op_partial_names": ["block"]})


def test_naming_a_container_without_op_types_explains_why_nothing_matched(net):
    with pytest.raises(ValueError, match=re.escape("'block' has no parameters of its own (name its layers, or give "
                                                   "op_types)")):
        prune(net, {"sparsity": 0.5, "op_names": ["block"]})


def test_layer_listing_is_truncated_for_big_models():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ValueError, match=r"layers with parameters: 0 \(Linear\), .*11 \(Linear\), \.\.\. and 18 "
                                         r"more$"):
        prune(model, {"sparsity": 0.5, "op_types": ["Conv2d"]})


def test_exclude_entry_selecting_nothing_is_allowed(net):
    assert names(prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_types": ["GRU"]})) == [
        "fc", "head.0", "head.2"]


def test_config_list_selecting_no_layer_at_all_is_an_error(net):
    with pytest.raises(ValueError, match=r"^config_list selects no layer of Net \(its exclude entries remove every "
                                         r"layer it matches\); layers with parameters: conv1 \(Conv2d\), "):
        prune(net, {"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_types": ["Linear"]})
    with pytest.raises(ValueError, match=r"^config_list selects no layer of Net"):
        prune(net, {"exclude": True, "op_types": ["Linear"]})


def test_layers_of_a_total_sparsity_entry_form_one_group(net):
    selected = prune(net, {"total_sparsity": 0.5, "op_types": ["Linear"]},
                     {"total_sparsity": 0.7, "op_types": ["Conv2d"]})
    groups: dict[int, list[str]] = {}
    for name, layer in selected.items():
        groups.setdefault(layer.entry_index, []).append(name)
    assert groups == {0: ["fc", "head.0", "head.2"], 1: ["conv1", "block.conv"]}


def test_max_sparsity_dict_must_name_modules_of_the_model(net):
    with pytest.raises(ValueError, match=re.escape(
            "config_list[0]['max_sparsity_per_layer']: 'fc2' is not a module of Net (did you mean 'fc'?)")):
        prune(net, {"total_sparsity": 0.5, "max_sparsity_per_layer": {"fc2": 0.9}, "op_types": ["Linear"]})


def test_layer_config_holds_the_module_and_its_own_copy_of_the_entry(net):
    selected = prune(net, {"sparsity": 0.5, "op_types": ["Linear"]})
    fc = selected["fc"]
    assert fc == LayerConfig("fc", net.fc, 0, {"sparsity": 0.5, "op_types": ["Linear"]})
    assert fc.module is net.fc
    fc.config["op_types"].append("Conv2d")
    assert selected["head.0"].config["op_types"] == ["Linear"]
    assert "module" not in repr(fc) and hash(fc) == hash(LayerConfig("fc", net.fc, 0, {}))


def test_quantization_selection_carries_normalised_entries(net):
    selected = select_layers(net, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["default"]},
                                   {"quant_types": ["weight", "input"], "quant_bits": 4, "op_names": ["fc"]}],
                             "quantizer")
    assert selected["fc"].config["quant_bits"] == {"weight": 4, "input": 4}
    assert selected["conv1"].config["quant_scheme"] == {"weight": "per_tensor_symmetric"}


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"^model: expected a torch.nn.Module, got \{\}"):
        select_layers({}, [{"sparsity": 0.5, "op_types": ["Linear"]}], "pruner")


def test_select_layers_validates_first(net):
    with pytest.raises(ValueError, match=re.escape("config_list[0]['sparsity']: expected a float in [0, 1), got 2")):
        prune(net, {"sparsity": 2, "op_types": ["Linear"]})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_admm_rho_must_be_finite_and_the_error_names_the_key(value):
    import nnic

    with pytest.raises(ValueError, match=r"config_list\[0\]\['rho'\]: expected a float in \(0, inf\)"):
        nnic.pruner("admm", nn.Sequential(nn.Linear(4, 4)), [{"sparsity": 0.5, "rho": value, "op_types": ["Linear"]}],
                    evaluator=None)


def test_kinds_are_the_registrys_names_and_the_old_names_still_validate():
    from nnic.registry import KINDS

    entry = [{"sparsity": 0.5, "op_types": ["Linear"]}]
    assert {"pruner", "quantizer"} <= set(KINDS)
    assert validate_config_list(entry, "pruner") == validate_config_list(entry, "pruning")
