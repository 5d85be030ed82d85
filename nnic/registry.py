"""Name -> plugin-provided object tables, one per kind, with the plugin and distribution that provided each.

The registry is filled by calling each hook implementation with a :class:`Register` bound to that plugin, so
every entry knows where it came from. Two rules keep lookups honest:

* A name registered by two plugins is remembered as a conflict and reported, naming both sources and the entry
  point to disable for each side, when someone asks for it.
* A name that nnic's own built-ins claim never passes silently to another distribution. Another plugin's
  registration of it is refused with a :class:`PluginLoadWarning`, also while the built-in is disabled, unless
  the user opts in to the override with ``NNIC_OVERRIDE_BUILTINS=name,...``; the override itself warns
  (:class:`BuiltinOverrideWarning`), every time the registry is built.

Adding a kind: add it to :data:`KINDS` and its hook to :data:`HOOK_KINDS`; :data:`EXPECTED` optionally names the
base class its objects must derive from.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("pruner", "quantizer", "speedup_rule", "lowering", "strategy")

HOOK_KINDS: dict[str, str] = {
    "register_pruners": "pruner",
    "register_quantizers": "quantizer",
    "register_speedup_rules": "speedup_rule",
    "register_lowerings": "lowering",
    "register_strategies": "strategy",
}

#: The class a registered object of a kind must be (a subclass of), as ``"module:Class"``, imported on use.
EXPECTED: dict[str, str] = {
    "pruner": "nnic.pruning.base:Pruner",
    "quantizer": "nnic.quantization.base:Quantizer",
    "strategy": "nnic.auto.strategy:Strategy",
}


class PluginError(Exception):
    """A plugin misbehaved (its hook raised, or it registered something invalid)."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same kind (or one claimed a built-in's name)."""


class UnknownPluginError(KeyError, ValueError):
    """No plugin of that kind has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadWarning(UserWarning):
    """A plugin (or one registration of it) could not be loaded and was skipped."""


class BuiltinOverrideWarning(UserWarning):
    """A plugin replaces one of nnic's built-ins, as the user asked with ``NNIC_OVERRIDE_BUILTINS``."""


@dataclass(frozen=True)
class Source:
    """Where a registration came from: the pluggy plugin name (the entry point's name) and its distribution.

    ``builtin`` is true for nnic's own entry points, identified by where their code lives (the ``nnic`` package),
    not by what a distribution's metadata calls itself.
    """

    plugin: str
    distribution: str
    version: str
    builtin: bool = False

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.distribution} {self.version})"


@dataclass(frozen=True)
class PluginInfo:
    """One registered object, as listed by ``nnic.list_plugins()`` and ``nnic plugins``."""

    name: str
    kind: str
    obj: Any
    source: Source
    aliases: tuple[str, ...] = ()

    @property
    def plugin(self) -> str:
        return self.source.plugin

    @property
    def distribution(self) -> str:
        return self.source.distribution

    @property
    def version(self) -> str:
        return self.source.version


def _disable_hint(info: PluginInfo) -> str:
    return f"NNIC_DISABLE_PLUGINS={info.plugin} drops {info.source}"


@dataclass
class Registry:
    """All registered objects of all kinds.

    ``overrides``: names that a non-built-in plugin may take from the built-ins (``NNIC_OVERRIDE_BUILTINS``).
    ``reserved``: ``{kind: names}`` the built-ins claim even where a built-in entry point is disabled.
    """

    overrides: Collection[str] = frozenset()
    reserved: dict[str, set[str]] = field(default_factory=dict)
    _names: dict[str, dict[str, PluginInfo]] = field(default_factory=dict)
    _conflicts: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)
    _refused: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)

    def _table(self, kind: str) -> dict[str, PluginInfo]:
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self._names.setdefault(kind, {})

    def add(self, info: PluginInfo) -> None:
        """Record ``info`` under its name and aliases, applying the conflict and built-in rules to each."""
        table = self._table(info.kind)
        for key in (info.name, *info.aliases):
            owner = table.get(key)
            builtin_owned = owner.source.builtin if owner is not None else key in self.reserved.get(info.kind, ())
            if builtin_owned and not info.source.builtin:
                self._take_builtin_name(table, key, info, owner)
            elif owner is None:
                table[key] = info
            else:
                self._conflicts.setdefault((info.kind, key), [owner]).append(info)

    def _take_builtin_name(self, table: dict[str, PluginInfo], key: str, info: PluginInfo,
                           owner: PluginInfo | None) -> None:
        builtin = f"nnic's built-in {owner.source}" if owner else "a disabled built-in of nnic"
        if key in self.overrides:
            table[key] = info
            warnings.warn(f"{info.kind} {key!r} is {info.obj!r} from {info.source}, REPLACING {builtin}, because "
                          f"NNIC_OVERRIDE_BUILTINS names {key!r}", BuiltinOverrideWarning, stacklevel=2)
            return
        self._refused[(info.kind, key)] = info
        warnings.warn(f"{info.source} registered {info.kind} {key!r}, a name of {builtin}; its registration is "
                      f"ignored. To make {key!r} mean the plugin's {info.kind}, set NNIC_OVERRIDE_BUILTINS={key}",
                      PluginLoadWarning, stacklevel=2)

    def get(self, kind: str, name: str) -> PluginInfo:
        """The entry registered as ``name`` (or an alias of it); raises with the available names if none."""
        table = self._table(kind)
        key = name.lower() if isinstance(name, str) else name
        if (kind, key) in self._conflicts:
            clashing = self._conflicts[(kind, key)]
            raise PluginConflictError(
                f"{kind} {name!r} is registered by both " + " and ".join(str(info.source) for info in clashing)
                + "; uninstall one, or disable one by its entry point: "
                + "; ".join(_disable_hint(info) for info in clashing)
            )
        info = table.get(key)
        if info is None and (kind, key) in self._refused:
            other = self._refused[(kind, key)]
            raise PluginConflictError(
                f"{kind} {name!r} is a name of nnic's built-ins, which are disabled here (NNIC_DISABLE_PLUGINS), "
                f"and {other.source} also registers it; nnic does not hand a built-in's name to another "
                f"distribution silently: set NNIC_OVERRIDE_BUILTINS={key} to use the plugin's {kind}"
            )
        if info is None:
            available = sorted({i.name for i in table.values()})
            hint = difflib.get_close_matches(str(name), sorted(table), n=1)
            raise UnknownPluginError(
                f"no {kind} named {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available: {', '.join(available) or 'none'}"
            )
        return info

    def list(self, kind: str | None = None) -> list[PluginInfo]:
        """Every entry (once, under its own name), conflicting ones included, in kind and name order."""
        kinds = KINDS if kind is None else (kind,)
        listed = {id(info): info for k in kinds for info in self._table(k).values()}
        listed.update({id(info): info for (k, _), infos in self._conflicts.items() if k in kinds for info in infos})
        return sorted(listed.values(), key=lambda i: (KINDS.index(i.kind), i.name, i.plugin))


def _expected_class(kind: str) -> type | None:
    if kind not in EXPECTED:
        return None
    module, _, name = EXPECTED[kind].partition(":")
    return getattr(importlib.import_module(module), name)


class Register:
    """The callback a hook implementation receives: ``register(obj, name=None, aliases=())``.

    Bound to one kind and one plugin, so that the registry records who registered what. Invalid registrations
    raise at once, naming the plugin: ``TypeError`` for a wrong type (an object that is not a subclass of the
    kind's base class, ``aliases`` given as one string), :class:`PluginError` for a missing or bad name.
    """

    def __init__(self, registry: Registry, kind: str, source: Source) -> None:
        self._registry, self._kind, self._source = registry, kind, source

    def __call__(self, obj: Any, *, name: str | None = None, aliases: Iterable[str] = ()) -> None:
        expected = _expected_class(self._kind)
        if expected is not None and not (isinstance(obj, type) and issubclass(obj, expected)):
            raise TypeError(f"{self._source} registered {obj!r} as a {self._kind}: expected a subclass of "
                            f"{expected.__module__}.{expected.__qualname__}")
        name = name if name is not None else getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"{self._source} registered {obj!r} as a {self._kind} without a name: pass name=... "
                f"or give the object a non-empty string attribute 'name'"
            )
        if aliases:
            given = aliases
        elif isinstance(obj, type):  # its own aliases: a subclass under a new name does not claim its parent's
            given = vars(obj).get("aliases", ())
        else:
            given = getattr(obj, "aliases", ())
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise TypeError(f"{self._source} registered {self._kind} {name!r} with aliases={given!r}: expected a "
                            f"list or tuple of names (aliases=({given!r},) for one alias)")
        names = (name, *given)
        bad = [n for n in names if not isinstance(n, str) or n != n.lower() or not n]
        if bad:
            raise PluginError(f"{self._source} registered {self._kind} names {bad!r}: names must be lower-case strings")
        self._registry.add(PluginInfo(name, self._kind, obj, self._source, tuple(given)))
