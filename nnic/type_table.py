"""Plugin objects looked up by module type: the one table behind lowerings and ONNX export handlers.

Some plugin kinds are chosen for a module by its class, not by a name the user writes: a lowering turns an
``nn.Linear`` into an ``Int8Linear``, an export handler writes an ``Int8Linear`` into an ONNX graph. Each such
object lists the classes it handles in ``targets``; :class:`TypeTable` maps every class to its object and finds
a module's by the nearest class in the module's MRO (a subclass of ``nn.Linear`` is lowered as a Linear unless a
plugin registered the subclass itself).

Two objects claiming the same class is a conflict: it raises at once, naming both objects and the plugin (and
distribution) each came from, and the entry point to disable, since which one wins must never depend on the
order plugins load in. Objects passed by the caller (not registered) are attributed to the caller.

A kind with such a table subclasses :class:`TypeTable` and sets :attr:`~TypeTable.kind` (its registry kind) and
:attr:`~TypeTable.noun` (what the objects are called in messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Self

from nnic.registry import PluginInfo

__all__ = ["TypeTable"]

_CALLER = "passed by the caller"


def _origin(info: PluginInfo | None) -> str:
    return _CALLER if info is None else f"from {info.source}"


def _disable_hint(infos: Iterable[PluginInfo | None]) -> str:
    plugins = sorted({info.plugin for info in infos if info is not None})
    if not plugins:
        return "pass only one of them"
    return "disable one plugin (" + " or ".join(f"NNIC_DISABLE_PLUGINS={p}" for p in plugins) + ")"


class TypeTable:
    """Objects (``name``, ``targets``) by the module class they handle; a module gets the object registered for
    the nearest class in its MRO.

    :param entries: the objects, each either a registry :class:`~nnic.registry.PluginInfo` (its plugin is named
        in conflicts) or a bare object (attributed to the caller).
    """

    kind: ClassVar[str] = ""
    noun: ClassVar[str] = "objects"

    def __init__(self, entries: Iterable[Any]) -> None:
        self._by_type: dict[type, Any] = {}
        self._origin: dict[type, PluginInfo | None] = {}
        for entry in entries:
            info = entry if isinstance(entry, PluginInfo) else None
            obj = entry.obj if isinstance(entry, PluginInfo) else entry
            for target in getattr(obj, "targets", ()):
                if not isinstance(target, type):
                    raise TypeError(f"{self.noun[:-1]} {getattr(obj, 'name', obj)!r} ({_origin(info)}) lists "
                                    f"{target!r} in targets: expected module classes")
                other = self._by_type.get(target)
                if other is not None and other is not obj:
                    first = self._origin[target]
                    raise ValueError(f"two {self.noun} handle {target.__qualname__}: {other.name!r} "
                                     f"({_origin(first)}) and {obj.name!r} ({_origin(info)}); "
                                     f"{_disable_hint([first, info])}")
                self._by_type[target] = obj
                self._origin[target] = info

    @classmethod
    def from_registry(cls, extra: Iterable[Any] = ()) -> Self:
        """Every object registered for :attr:`kind`, plus ``extra`` ones the caller passes."""
        from nnic.plugins import get_registry

        return cls([*get_registry().list(cls.kind), *extra])

    def find(self, module: object) -> Any | None:
        """The object for ``module``'s nearest class in its MRO, or ``None``."""
        for klass in type(module).__mro__:
            if klass in self._by_type:
                return self._by_type[klass]
        return None

    def known(self) -> list[str]:
        """The handled class names, sorted (for messages listing what is supported)."""
        return sorted(t.__name__ for t in self._by_type)
