"""Name -> plugin-provided object tables, one per kind, with the plugin and distribution that provided each.

The registry is filled by calling each hook implementation with a :class:`Register` bound to that plugin, so
every entry knows where it came from; a name registered twice is remembered as a conflict and reported, naming
both sources, when someone asks for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("pruner", "quantizer", "speedup_rule", "lowering", "onnx_export")


class PluginError(Exception):
    """A plugin misbehaved (its hook raised, or it registered something invalid)."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same kind."""


class UnknownPluginError(KeyError, ValueError):
    """No plugin of that kind has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    """Where a registration came from: the pluggy plugin name and its installed distribution."""

    plugin: str
    distribution: str
    version: str

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


@dataclass
class Registry:
    """All registered objects of all kinds."""

    _entries: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    _aliases: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    _conflicts: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)

    def add(self, info: PluginInfo) -> None:
        table, aliases = self._entries[info.kind], self._aliases[info.kind]
        for key in (info.name, *info.aliases):
            owner = table.get(key) or table.get(aliases.get(key, ""))
            if owner is not None:
                self._conflicts.setdefault((info.kind, key), [owner]).append(info)
        if info.name not in table:
            table[info.name] = info
        for alias in info.aliases:
            aliases.setdefault(alias, info.name)

    def get(self, kind: str, name: str) -> PluginInfo:
        """The entry registered as ``name`` (or an alias of it); raises with the available names if none."""
        if kind not in self._entries:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")
        key = name.lower() if isinstance(name, str) else name
        if (kind, key) in self._conflicts:
            clashing = self._conflicts[(kind, key)]
            raise PluginConflictError(
                f"{kind} {name!r} is registered by both "
                + " and ".join(str(info.source) for info in clashing)
                + "; uninstall one, or disable one with NNIC_DISABLE_PLUGINS="
                + ",".join(info.plugin for info in clashing[1:])
            )
        table = self._entries[kind]
        info = table.get(key) or table.get(self._aliases[kind].get(key, ""))
        if info is None:
            available = sorted(table)
            hint = difflib.get_close_matches(str(name), available, n=1)
            raise UnknownPluginError(
                f"no {kind} named {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available: {', '.join(available) or 'none'}"
            )
        return info

    def list(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = KINDS if kind is None else (kind,)
        for k in kinds:
            if k not in self._entries:
                raise ValueError(f"unknown plugin kind {k!r}; expected one of {', '.join(KINDS)}")
        listed = [info for k in kinds for info in self._entries[k].values()]
        listed += [info for (k, _), infos in self._conflicts.items() if k in kinds for info in infos[1:]]
        return sorted(listed, key=lambda i: (KINDS.index(i.kind), i.name, i.plugin))


class Register:
    """The callback a hook implementation receives: ``register(obj, name=None, aliases=())``.

    Bound to one kind and one plugin, so that the registry records who registered what.
    """

    def __init__(self, registry: Registry, kind: str, source: Source) -> None:
        self._registry, self._kind, self._source = registry, kind, source

    def __call__(self, obj: Any, *, name: str | None = None, aliases: Iterable[str] = ()) -> None:
        name = name if name is not None else getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"{self._source} registered {obj!r} as a {self._kind} without a name: pass name=... "
                f"or give the object a non-empty string attribute 'name'"
            )
        aliases = tuple(aliases) or tuple(getattr(obj, "aliases", ()))
        names = (name, *aliases)
        bad = [n for n in names if not isinstance(n, str) or n != n.lower() or not n]
        if bad:
            raise PluginError(f"{self._source} registered {self._kind} names {bad!r}: names must be lower-case strings")
        self._registry.add(PluginInfo(name, self._kind, obj, self._source, aliases))


HOOK_KINDS: dict[str, str] = {
    "register_pruners": "pruner",
    "register_quantizers": "quantizer",
    "register_speedup_rules": "speedup_rule",
    "register_lowerings": "lowering",
    "register_onnx_exporters": "onnx_export",
}
