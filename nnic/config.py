"""NNI-compatible ``config_list`` validation: the schema of every key, and the messages users fix files by.

A config_list is a list of dicts. For a given layer the *last* matching dict wins, and a matching dict with
``exclude: True`` removes the layer. Every mistake is reported as ``TypeError`` (wrong type) or ``ValueError``
(anything else) whose message starts with where it is, e.g.
``config_list[1]['sparsity']: expected a float in [0, 1), got 1.5``, because users fix config files by reading
these messages.

Keys are declared as :class:`Key` objects (a name, a check and a phrase saying what is expected), so that a
pruner or quantizer can accept its own keys, or narrow a built-in one, by passing ``extra_keys``::

    NM_KEYS = (int_key("n", lo=1, required=True), int_key("m", lo=1, required=True))
    select_layers(model, config_list, "pruner", extra_keys=NM_KEYS, require_sparsity=False)

Which layers an entry selects is :mod:`nnic.selection`'s job. This module imports only the standard library,
so it can be used and tested on its own.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


__all__ = [
    "DEFAULT_OP_TYPES", "NO_DEFAULT", "PRUNING_KEYS", "QUANTIZATION_KEYS", "QUANT_SCHEMES", "QUANT_TYPES",
    "SELECTION_KEYS", "Key", "bool_key", "choice_key", "float_key", "int_key", "validate_config_list",
]

#: What ``op_types: ["default"]`` means: every module type that computes with a weight.
#: Normalisation layers are deliberately absent: pruning them alone is rarely what a user wants.
DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "Embedding", "EmbeddingBag",
)
QUANT_TYPES: tuple[str, ...] = ("weight", "input", "output")
QUANT_SCHEMES: tuple[str, ...] = (
    "per_tensor_symmetric", "per_tensor_affine", "per_channel_symmetric", "per_channel_affine",
)
_SELECTORS = ("op_types", "op_names", "op_partial_names")


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Key:
    """One accepted config_list key.

    ``check(value)`` returns true when the value is acceptable. It may raise ``TypeError`` (reported as a wrong
    type) or ``ValueError``; either way the user sees the standard message built from ``expected``, so a plugin
    author writes a predicate and a phrase, not error handling. ``convert`` turns an accepted value into its
    normalised form. A ``per_quant_type`` key takes a value or a ``{quant_type: value}`` dict and is normalised to
    the dict form; ``check`` then sees one value at a time. ``required`` and ``default`` apply to entries that are
    not ``exclude`` entries. A key in ``extra_keys`` named like a built-in key *narrows* it: both checks must
    pass, its ``expected`` (and ``default``, if given) are used, and the rest stays the built-in's, so a
    quantizer limited to 2..8 bits passes ``int_key("quant_bits", 2, 8)`` and cannot loosen a built-in rule.
    """

    name: str
    check: Callable[[Any], bool]
    expected: str
    aliases: tuple[str, ...] = ()
    default: Any = NO_DEFAULT
    required: bool = False
    per_quant_type: bool = False
    convert: Callable[[Any], Any] = copy.deepcopy


def _is_real(value: Any) -> bool:
    # bool is an int subclass, but `sparsity: True` is never meant as 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError
    return True


def _is_int(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError
    return True


def _interval(lo: float | None, hi: float | None, lo_closed: bool, hi_closed: bool) -> str:
    left = "(-inf" if lo is None else f"{'[' if lo_closed else '('}{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}{']' if hi_closed else ')'}"
    return f"{left}, {right}"


def _in_range(x: float, lo: float | None, hi: float | None, lo_closed: bool, hi_closed: bool) -> bool:
    if isinstance(x, float) and not math.isfinite(x):  # NaN, and the infinities every interval leaves open
        return False
    lo_ok = lo is None or (x >= lo if lo_closed else x > lo)
    return lo_ok and (hi is None or (x <= hi if hi_closed else x < hi))


def float_key(name: str, lo: float | None = None, hi: float | None = None, *, lo_closed: bool = True,
              hi_closed: bool = False, **kw: Any) -> Key:
    """A real-number key (ints accepted, bools not) within an interval; normalised to ``float``."""
    def check(v: Any) -> bool:
        return _is_real(v) and _in_range(float(v), lo, hi, lo_closed, hi_closed)
    return Key(name, check, f"a float in {_interval(lo, hi, lo_closed, hi_closed)}", convert=float, **kw)


def int_key(name: str, lo: int | None = None, hi: int | None = None, **kw: Any) -> Key:
    """An int key (bools rejected) within the closed interval ``[lo, hi]``; normalised to ``int``."""
    def check(v: Any) -> bool:
        return _is_int(v) and _in_range(int(v), lo, hi, True, True)
    bounds = "" if lo is None and hi is None else f" in {_interval(lo, hi, True, True)}"
    return Key(name, check, f"an int{bounds}", convert=int, **kw)


def choice_key(name: str, choices: Sequence[Any], **kw: Any) -> Key:
    """A key whose value is one of ``choices`` (compared by type and value, so ``1`` is not ``True``)."""
    choices = tuple(choices)
    def check(v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in choices)
    return Key(name, check, "one of " + ", ".join(map(repr, choices)), **kw)


def bool_key(name: str, **kw: Any) -> Key:
    """A ``True``/``False`` key."""
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise TypeError
        return True
    return Key(name, check, "a bool", **kw)


def _str_list(v: Any) -> bool:
    # A bare string is the classic mistake (`"op_types": "Linear"`); it is a str, not a list of them.
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise TypeError
    return len(v) > 0


def _quant_types(v: Any) -> bool:
    return _str_list(v) and len(set(v)) == len(v) and all(t in QUANT_TYPES for t in v)


def _granularity(v: Any) -> bool:
    if isinstance(v, str):
        return v in ("default", "per_tensor", "per_channel")
    return _is_int(v) and v > 0


def _max_sparsity(v: Any) -> bool:
    # A float caps every layer of the group; a dict caps the named layers only.
    if isinstance(v, Mapping):
        return all(isinstance(k, str) and _is_real(x) and _in_range(float(x), 0, 1, False, True)
                   for k, x in v.items())
    return _is_real(v) and _in_range(float(v), 0, 1, False, True)


def _convert_max_sparsity(v: Any) -> float | dict[str, float]:
    return {k: float(x) for k, x in v.items()} if isinstance(v, Mapping) else float(v)


SELECTION_KEYS: tuple[Key, ...] = (
    Key("op_types", _str_list, "a non-empty list of module class names (str)", convert=list),
    Key("op_names", _str_list, "a non-empty list of qualified module names (str)", convert=list),
    Key("op_partial_names", _str_list, "a non-empty list of name substrings (str)", convert=list),
    bool_key("exclude"),
)
PRUNING_KEYS: tuple[Key, ...] = (
    float_key("sparsity", 0, 1, aliases=("sparsity_per_layer",)),
    float_key("total_sparsity", 0, 1),
    Key("max_sparsity_per_layer", _max_sparsity, "a float in (0, 1] or a dict {op_name: float in (0, 1]}",
        convert=_convert_max_sparsity),
)
QUANTIZATION_KEYS: tuple[Key, ...] = (
    Key("quant_types", _quant_types, "a non-empty list of distinct quant types from 'weight', 'input', 'output'",
        convert=list),
    int_key("quant_bits", 1, 32, required=True, per_quant_type=True),
    choice_key("quant_dtype", ("int", "uint"), default="int", per_quant_type=True),
    choice_key("quant_scheme", QUANT_SCHEMES, default="per_tensor_symmetric", per_quant_type=True),
    Key("granularity", _granularity, "'default', 'per_tensor', 'per_channel' or an int group size > 0",
        default="default", per_quant_type=True),
)
#: The keys of each registry kind (:data:`nnic.registry.KINDS`) that takes a config_list.
_KIND_KEYS = {"pruner": PRUNING_KEYS, "quantizer": QUANTIZATION_KEYS}
#: The names this module used before it shared the registry's, still accepted from older callers.
_OLD_KIND_NAMES = {"pruning": "pruner", "quantization": "quantizer"}
_show = reprlib.Repr()
_show.maxstring = _show.maxother = 60
_show.maxlist = _show.maxtuple = _show.maxdict = _show.maxset = 8
_show.maxlevel = 3


def _got(value: Any) -> str:
    try:
        return _show.repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        return f"<{type(value).__name__} object>"


def _where(index: int, key: str | None = None, sub: str | None = None) -> str:
    return f"config_list[{index}]" + ("" if key is None else f"[{key!r}]") + ("" if sub is None else f"[{sub!r}]")


def _run_check(key: Key, value: Any, where: str, expected: str | None = None) -> Any:
    """Apply ``key.check`` to one value; return its converted form or raise the standard error."""
    message = f"{where}: expected {expected or key.expected}, got {_got(value)}"
    try:
        ok = key.check(value)
    except TypeError:
        raise TypeError(message) from None
    except (ValueError, ArithmeticError):
        raise ValueError(message) from None
    if not ok:
        raise ValueError(message)
    try:
        return key.convert(value)
    except (TypeError, ValueError, ArithmeticError):
        raise ValueError(message) from None


def _narrowed(builtin: Key, key: Key) -> Key:
    """A built-in key narrowed by a plugin: both checks must pass; the structure stays the built-in's."""
    def check(v: Any) -> bool:
        return bool(builtin.check(v)) and bool(key.check(v))
    default = builtin.default if key.default is NO_DEFAULT else key.default
    return replace(builtin, check=check, expected=key.expected, default=default)


def _schema(kind: str, extra_keys: Iterable[Key]) -> dict[str, Key]:
    if kind not in _KIND_KEYS:
        raise ValueError(f"kind: expected 'pruner' or 'quantizer', got {_got(kind)}")
    keys = {k.name: k for k in (*SELECTION_KEYS, *_KIND_KEYS[kind])}
    builtin = set(keys)
    for key in extra_keys:
        if not isinstance(key, Key):
            raise TypeError(f"extra_keys: expected Key objects, got {_got(key)}")
        if key.name in _SELECTORS or key.name == "exclude" or (key.name in keys and key.name not in builtin):
            raise ValueError(f"extra_keys: key {key.name!r} is given twice or is a selection key")
        keys[key.name] = _narrowed(keys[key.name], key) if key.name in builtin else key
        builtin.discard(key.name)
    spellings = [s for k in keys.values() for s in (k.name, *k.aliases)]
    clash = sorted({s for s in spellings if spellings.count(s) > 1})
    if clash:
        raise ValueError(f"extra_keys: {', '.join(map(repr, clash))} would name two keys")
    return keys


def _closest(word: str, choices: Iterable[str], fmt: str = " ({})") -> str:
    """``fmt`` filled with "did you mean 'x' or 'y'?" when some choice is close to ``word``, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return fmt.format(f"did you mean {' or '.join(map(repr, close))}?") if close else ""


def _resolve_names(index: int, entry: Mapping[Any, Any], keys: dict[str, Key], kind: str) -> dict[str, str]:
    """Map each key of the entry, as written, to its canonical name; reject unknown keys and alias clashes."""
    by_alias = {a: k.name for k in keys.values() for a in (k.name, *k.aliases)}
    names: dict[str, str] = {}
    for written in entry:
        if not isinstance(written, str):
            raise TypeError(f"{_where(index)}: expected str keys, got {_got(written)}")
        if written not in by_alias:
            other = "quantizer" if kind == "pruner" else "pruner"
            hint = (f" ({written!r} is a {other} key; this is a {kind} config_list)"
                    if any(written == k.name or written in k.aliases for k in _KIND_KEYS[other]) else "")
            raise ValueError(f"{_where(index)}: unknown key {written!r}{hint}{_closest(written, by_alias)}; "
                             f"allowed keys: {', '.join(sorted(by_alias))}")
        canonical = by_alias[written]
        twice = [w for w, c in names.items() if c == canonical]
        if twice:
            alias = twice[0] if written == canonical else written
            raise ValueError(f"{_where(index)}: {canonical!r} and its alias {alias!r} are both given; "
                             f"use only {canonical!r}")
        names[written] = canonical
    return names


def _per_type(index: int, key: Key, written: str, value: Any, quant_types: list[str] | None) -> dict[str, Any]:
    """Expand a per-quant-type value to ``{quant_type: value}`` for exactly the entry's quant types."""
    where = _where(index, written)
    if quant_types is None:
        raise ValueError(f"{where}: expected 'quant_types' in the same entry, got {_got(value)} without it")
    if not isinstance(value, Mapping):
        converted = _run_check(key, value, where, f"{key.expected} or a dict {{quant_type: value}}")
        return {t: copy.deepcopy(converted) for t in quant_types}
    out = {}
    for t, v in value.items():
        if t not in quant_types:
            raise ValueError(f"{where}: expected a dict keyed by quant_types {quant_types}, got key {_got(t)}")
        out[t] = _run_check(key, v, _where(index, written, t))
    for t in quant_types:
        if t not in out:
            if key.default is NO_DEFAULT:
                raise ValueError(f"{where}: expected a value for every quant type in {quant_types}, "
                                 f"got {_got(value)} (missing {t!r})")
            out[t] = copy.deepcopy(key.default)
    return out


def _validate_entry(index: int, entry: Any, keys: dict[str, Key], kind: str,
                    require_sparsity: bool) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{_where(index)}: expected a dict, got {_got(entry)}")
    names = _resolve_names(index, entry, keys, kind)
    out: dict[str, Any] = {}
    if "quant_types" in entry:  # per-type keys need it, whatever the order of the entry's keys
        out["quant_types"] = _run_check(keys["quant_types"], entry["quant_types"], _where(index, "quant_types"))
    for written, value in entry.items():
        key = keys[names[written]]
        if key.name in out:
            continue
        if key.per_quant_type:
            out[key.name] = _per_type(index, key, written, value, out.get("quant_types"))
        else:
            out[key.name] = _run_check(key, value, _where(index, written))
    exclude = out.get("exclude", False)
    if not any(s in out for s in _SELECTORS):
        raise ValueError(f"{_where(index)}: expected at least one of 'op_types', 'op_names', 'op_partial_names', "
                         f"got keys {sorted(names)}")
    if kind == "pruner":
        _check_pruning(index, out, exclude, require_sparsity)
    if not exclude:
        for key in keys.values():
            if key.name in out:
                continue
            if key.per_quant_type and "quant_types" in out:
                if key.default is not NO_DEFAULT:
                    out[key.name] = {t: copy.deepcopy(key.default) for t in out["quant_types"]}
                elif key.required:
                    raise ValueError(f"{_where(index)}: missing required key {key.name!r} ({key.expected} for "
                                     f"each of {out['quant_types']})")
            elif key.name == "quant_types" or (key.required and not key.per_quant_type):
                raise ValueError(f"{_where(index)}: missing required key {key.name!r} ({key.expected})")
            elif key.default is not NO_DEFAULT and not key.per_quant_type:
                out[key.name] = copy.deepcopy(key.default)
    return out


def _check_pruning(index: int, out: dict[str, Any], exclude: bool, require_sparsity: bool) -> None:
    if "sparsity" in out and "total_sparsity" in out:
        raise ValueError(f"{_where(index)}: expected one of 'sparsity' and 'total_sparsity', got both")
    if require_sparsity and not exclude and "sparsity" not in out and "total_sparsity" not in out:
        raise ValueError(f"{_where(index)}: missing required key 'sparsity' (or 'total_sparsity'); "
                         f"an entry that only selects layers needs 'exclude': True")
    if "max_sparsity_per_layer" in out:
        if "total_sparsity" not in out:
            raise ValueError(f"{_where(index, 'max_sparsity_per_layer')}: expected 'total_sparsity' in the same "
                             f"entry (a per-layer cap only bounds a shared threshold)")
        cap, total = out["max_sparsity_per_layer"], out["total_sparsity"]
        if isinstance(cap, float) and cap < total:
            raise ValueError(f"{_where(index, 'max_sparsity_per_layer')}: expected a float in [{total:g}, 1] "
                             f"(at least the entry's total_sparsity), got {cap!r}")


def validate_config_list(config_list: Any, kind: str, *, extra_keys: Iterable[Key] = (),
                         require_sparsity: bool = True) -> list[dict[str, Any]]:
    """Check a config_list and return normalised deep copies of its entries.

    Normalisation: ``sparsity_per_layer`` becomes ``sparsity``; numbers become ``float``/``int``; sequences become
    lists; ``quant_bits``, ``quant_dtype``, ``quant_scheme`` and ``granularity`` become ``{quant_type: value}`` for
    every quant type of the entry, defaults filled in. ``op_types`` is kept as given (``"default"`` is resolved by
    :func:`select_layers`, which knows the model). ``require_sparsity=False`` is for pruners whose sparsity comes
    from their own keys (N:M). Raises ``TypeError`` for a wrong type and ``ValueError`` otherwise.
    """
    kind = _OLD_KIND_NAMES.get(kind, kind) if isinstance(kind, str) else kind
    keys = _schema(kind, extra_keys)
    if not isinstance(config_list, (list, tuple)):  # a tuple is as unambiguous as a list; a dict is not
        raise TypeError(f"config_list: expected a list of dicts, got {_got(config_list)}")
    if not config_list:
        raise ValueError("config_list: expected at least one entry, got []")
    return [_validate_entry(i, entry, keys, kind, require_sparsity) for i, entry in enumerate(config_list)]
