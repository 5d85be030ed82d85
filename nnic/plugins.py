"""Finding and loading plugins: the ``nnic`` entry-point group, with errors that name the culprit.

Every plugin, nnic's own built-ins included, is found through the ``nnic`` entry-point group. A plugin that
fails to import, or that implements a hook that does not exist (a misspelling), is skipped with a
:class:`PluginLoadWarning` naming the entry point, its distribution and the cause; the others still load.

Environment:
    NNIC_DISABLE_PLUGINS=a,b         do not load the entry points named a and b (built-ins included)
    NNIC_DISABLE_PLUGIN_AUTOLOAD=1   load only nnic's own built-in entry points
    NNIC_TRACE_PLUGINS=1             print every hook call and its result (debugging)
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import os
import sys
import warnings
from typing import Any

import pluggy

from nnic import hookspecs
from nnic.registry import HOOK_KINDS, PluginError, Register, Registry, Source

ENTRY_POINT_GROUP = "nnic"
CORE_DISTRIBUTION = "nnic"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


def _env_list(var: str) -> list[str]:
    return [name.strip() for name in os.environ.get(var, "").split(",") if name.strip()]


def _entry_points() -> list[tuple[md.EntryPoint, md.Distribution]]:
    """Entry points of the group, each with its distribution, the core's own first."""
    found = [
        (ep, dist)
        for dist in md.distributions()
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    ]
    return sorted(found, key=lambda pair: _dist_name(pair[1]) != CORE_DISTRIBUTION)


def _dist_name(dist: md.Distribution) -> str:
    return dist.metadata["Name"] or "<unknown distribution>"


def _skip(ep: md.EntryPoint, dist: md.Distribution, cause: str) -> None:
    warnings.warn(
        f"nnic plugin {ep.name!r} ({ep.value}) from distribution {_dist_name(dist)} {dist.version} "
        f"was not loaded: {cause}. Set NNIC_DISABLE_PLUGINS={ep.name} to stop loading it.",
        PluginLoadWarning,
        stacklevel=4,
    )


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of hook implementations in ``plugin`` that match no hook spec (pluggy's check_pending, per plugin)."""
    return [
        caller.name
        for caller in pm.get_hookcallers(plugin) or ()
        if caller.spec is None and not any(impl.optionalhook for impl in caller.get_hookimpls())
    ]


def _load_entry_points(pm: pluggy.PluginManager, sources: dict[str, Source]) -> None:
    autoload = not os.environ.get("NNIC_DISABLE_PLUGIN_AUTOLOAD")
    for ep, dist in _entry_points():
        dist_name = _dist_name(dist)
        if pm.is_blocked(ep.name) or (not autoload and dist_name != CORE_DISTRIBUTION):
            continue
        if pm.has_plugin(ep.name):
            if sources[ep.name].distribution != dist_name:
                _skip(ep, dist, f"the name is already taken by {sources[ep.name]}")
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            _skip(ep, dist, f"{type(exc).__name__}: {exc}")
            continue
        unknown = _unknown_hooks(pm, plugin)
        if unknown:
            pm.unregister(plugin)
            hints = [difflib.get_close_matches(name, HOOK_KINDS, n=1) for name in unknown]
            _skip(ep, dist, "it implements unknown hook(s) " + ", ".join(
                f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for name, hint in zip(unknown, hints)
            ))
            continue
        sources[ep.name] = Source(ep.name, dist_name, dist.version)


@functools.cache
def _loaded() -> tuple[pluggy.PluginManager, dict[str, Source]]:
    pm = pluggy.PluginManager("nnic")
    pm.add_hookspecs(hookspecs)
    for name in _env_list("NNIC_DISABLE_PLUGINS"):
        pm.set_blocked(name)
    sources: dict[str, Source] = {}
    _load_entry_points(pm, sources)
    pm.check_pending()
    if os.environ.get("NNIC_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm, sources


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading the plugins on first use (never on ``import nnic``)."""
    return _loaded()[0]


def source_of(plugin_name: str, plugin: Any = None) -> Source:
    """Where a registered plugin came from; plugins registered by hand (tests, notebooks) have no distribution."""
    sources = _loaded()[1]
    if plugin_name in sources:
        return sources[plugin_name]
    module = getattr(plugin, "__name__", type(plugin).__name__)
    return Source(plugin_name, f"<registered at run time: {module}>", "")


@functools.cache
def get_registry() -> Registry:
    """Every pruner, quantizer and speedup rule that the loaded plugins register."""
    pm = get_plugin_manager()
    registry = Registry()
    trace = pm.trace.root.get("registry")  # prints with NNIC_TRACE_PLUGINS=1
    for hook_name, kind in HOOK_KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            source = source_of(impl.plugin_name, impl.plugin)
            trace(hook_name, str(source))
            try:
                impl.function(register=Register(registry, kind, source))
            except Exception as exc:
                warnings.warn(
                    f"{source} raised in {hook_name}: {type(exc).__name__}: {exc}; "
                    f"what it registered before that is kept",
                    PluginLoadWarning,
                    stacklevel=2,
                )
    return registry


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object by hand (a notebook, a test, an application's own algorithms)."""
    get_plugin_manager().register(plugin, name=name)
    get_registry.cache_clear()


def reload() -> None:
    """Forget the loaded plugins, so the next lookup finds them anew (after an install, or in tests)."""
    _loaded.cache_clear()
    get_registry.cache_clear()


__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginLoadWarning",
    "get_plugin_manager",
    "get_registry",
    "register",
    "reload",
    "source_of",
]
