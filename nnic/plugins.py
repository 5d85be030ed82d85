"""Finding and loading plugins: the ``nnic`` entry-point group, with errors that name the culprit.

Every plugin, nnic's own built-ins included, is found through the ``nnic`` entry-point group. nnic's built-ins
are the entry points whose code lives in the imported ``nnic`` package; what a distribution's metadata calls
itself does not matter. A plugin that fails to import, raises in a hook (``SystemExit`` included), or implements
a hook that does not exist (a misspelling), is skipped with a :class:`PluginLoadWarning` naming the entry point,
its distribution and the cause; the others still load, and the failure is remembered until :func:`reload`.
``KeyboardInterrupt`` is not a plugin failure: it propagates, nothing is remembered, and the next lookup loads
the plugins anew. Whatever a plugin prints while it loads goes to stderr, so ``nnic plugins`` output stays clean.

Environment (booleans accept 1/true/yes/on and 0/false/no/off):
    NNIC_DISABLE_PLUGINS=a,b         do not load the entry points named a and b (built-ins included)
    NNIC_DISABLE_PLUGIN_AUTOLOAD=1   load only nnic's own built-in entry points
    NNIC_OVERRIDE_BUILTINS=a,b       let another plugin's a and b replace the built-ins of those names (warns)
    NNIC_TRACE_PLUGINS=1             print how long each plugin takes to load, and every hook call
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.metadata as md
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy

from nnic import hookspecs
from nnic.registry import HOOK_KINDS, PluginError, PluginLoadWarning, Register, Registry, Source

ENTRY_POINT_GROUP = "nnic"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_PLUGIN_FAILURES = (Exception, SystemExit)  # KeyboardInterrupt is the user's: it propagates


def env_flag(var: str) -> bool:
    """The boolean environment variable ``var`` (unset or empty is false); anything else is a ``ValueError``."""
    value = os.environ.get(var, "").strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"environment variable {var}={os.environ[var]!r}: expected a boolean "
                     f"({'/'.join(_TRUE)} or {'/'.join(_FALSE[1:])})")


def _env_list(var: str) -> list[str]:
    return [name.strip() for name in os.environ.get(var, "").split(",") if name.strip()]


def _in_nnic(ep: md.EntryPoint) -> bool:
    return ep.module == "nnic" or ep.module.startswith("nnic.")


def _is_builtin(ep: md.EntryPoint) -> bool:
    """Whether the entry point's module is part of the imported ``nnic`` package (found, not imported)."""
    if not _in_nnic(ep):
        return False
    try:
        spec = importlib.util.find_spec(ep.module)
    except (ImportError, ValueError):
        return False
    package_dir = Path(__file__).resolve().parent
    return spec is not None and spec.origin is not None and package_dir in Path(spec.origin).resolve().parents


def _entry_points() -> list[tuple[md.EntryPoint, md.Distribution, bool]]:
    """Entry points of the group, each with its distribution and whether it is a built-in, built-ins first."""
    found = [
        (ep, dist, _is_builtin(ep))
        for dist in md.distributions()
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    ]
    return sorted(found, key=lambda triple: not triple[2])


def _dist_name(dist: md.Distribution) -> str:
    return dist.metadata["Name"] or "<unknown distribution>"


def _skip(ep: md.EntryPoint, dist: md.Distribution, cause: str) -> None:
    warnings.warn(
        f"nnic plugin {ep.name!r} ({ep.value}) from distribution {_dist_name(dist)} {dist.version} "
        f"was not loaded: {cause}. Set NNIC_DISABLE_PLUGINS={ep.name} to stop loading it.",
        PluginLoadWarning,
        stacklevel=5,
    )


@contextlib.contextmanager
def _plugin_code(what: str) -> Iterator[None]:
    """Run a plugin's code with its prints sent to stderr, timed on stderr when NNIC_TRACE_PLUGINS is set."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        yield
    if env_flag("NNIC_TRACE_PLUGINS"):
        sys.stderr.write(f"nnic: {what} took {time.perf_counter() - start:.3f} s\n")


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of hook implementations in ``plugin`` that match no hook spec (pluggy's check_pending, per plugin)."""
    return [
        caller.name
        for caller in pm.get_hookcallers(plugin) or ()
        if caller.spec is None and not any(impl.optionalhook for impl in caller.get_hookimpls())
    ]


def _load(ep: md.EntryPoint, dist: md.Distribution) -> Any:
    """The entry point's object, or None (with a warning) when importing it fails."""
    try:
        with _plugin_code(f"loading plugin {ep.name!r} ({ep.value}, distribution {_dist_name(dist)})"):
            return ep.load()
    except _PLUGIN_FAILURES as exc:  # a broken plugin must not break the others
        _skip(ep, dist, f"{type(exc).__name__}: {exc}")
        return None


def _load_entry_points(pm: pluggy.PluginManager, sources: dict[str, Source], disabled_builtins: list[Any]) -> None:
    autoload = not env_flag("NNIC_DISABLE_PLUGIN_AUTOLOAD")
    values: dict[str, str] = {}
    for ep, dist, builtin in _entry_points():
        dist_name = _dist_name(dist)
        if pm.is_blocked(ep.name):
            if builtin and ep.name not in values:  # still needed: its names stay reserved for the built-ins
                values[ep.name] = ep.value
                plugin = _load(ep, dist)
                if plugin is not None:
                    disabled_builtins.append(plugin)
            continue
        if not autoload and not builtin:
            continue
        if _in_nnic(ep) and not builtin:
            continue  # another nnic install's metadata naming a module this nnic does not have: not a plugin
        if pm.has_plugin(ep.name) or ep.name in values:
            if values.get(ep.name) != ep.value:
                taken = sources.get(ep.name, f"nnic's built-in {ep.name!r}")
                _skip(ep, dist, f"the name is already taken by {taken}")
            continue  # the same distribution seen twice on sys.path
        values[ep.name] = ep.value
        plugin = _load(ep, dist)
        if plugin is None:
            continue
        pm.register(plugin, name=ep.name)
        unknown = _unknown_hooks(pm, plugin)
        if unknown:
            pm.unregister(plugin)
            hints = [difflib.get_close_matches(name, HOOK_KINDS, n=1) for name in unknown]
            _skip(ep, dist, "it implements unknown hook(s) " + ", ".join(
                f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for name, hint in zip(unknown, hints)
            ))
            continue
        sources[ep.name] = Source(ep.name, dist_name, dist.version, builtin)


@functools.cache
def _loaded() -> tuple[pluggy.PluginManager, dict[str, Source], tuple[Any, ...]]:
    tracing = env_flag("NNIC_TRACE_PLUGINS")  # a garbled value fails here, not as every plugin's failure
    pm = pluggy.PluginManager("nnic")
    pm.add_hookspecs(hookspecs)
    for name in _env_list("NNIC_DISABLE_PLUGINS"):
        pm.set_blocked(name)
    sources: dict[str, Source] = {}
    disabled_builtins: list[Any] = []
    _load_entry_points(pm, sources, disabled_builtins)
    pm.check_pending()
    if tracing:
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm, sources, tuple(disabled_builtins)


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


def _call_hook(function: Callable[..., Any], register: Register, source: Source, hook_name: str) -> None:
    try:
        with _plugin_code(f"{source} in {hook_name}"):
            function(register=register)
    except _PLUGIN_FAILURES as exc:
        warnings.warn(f"{source} raised in {hook_name}: {type(exc).__name__}: {exc}; "
                      f"what it registered before that is kept",
                      PluginLoadWarning, stacklevel=4)


def _reserved_names(disabled_builtins: tuple[Any, ...]) -> dict[str, set[str]]:
    """The names that disabled built-in entry points would register, so that no other plugin takes them."""
    scratch = Registry()
    pm = pluggy.PluginManager("nnic")
    pm.add_hookspecs(hookspecs)
    for plugin in disabled_builtins:
        pm.register(plugin)
    for hook_name, kind in HOOK_KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            with contextlib.suppress(*_PLUGIN_FAILURES), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                impl.function(register=Register(scratch, kind, Source(impl.plugin_name, "nnic", "", True)))
    return {kind: {key for info in scratch.list(kind) for key in (info.name, *info.aliases)} for kind in HOOK_KINDS.values()}


@functools.cache
def get_registry() -> Registry:
    """Every pruner, quantizer and speedup rule that the loaded plugins register."""
    pm, _, disabled_builtins = _loaded()
    registry = Registry(overrides=frozenset(_env_list("NNIC_OVERRIDE_BUILTINS")),
                        reserved=_reserved_names(disabled_builtins))
    trace = pm.trace.root.get("registry")  # prints with NNIC_TRACE_PLUGINS=1
    for hook_name, kind in HOOK_KINDS.items():
        caller = getattr(pm.hook, hook_name)
        impls = [(impl, source_of(impl.plugin_name, impl.plugin)) for impl in reversed(caller.get_hookimpls())]
        for impl, source in sorted(impls, key=lambda pair: not pair[1].builtin):  # built-ins, then pluggy's order
            trace(hook_name, str(source))
            _call_hook(impl.function, Register(registry, kind, source), source, hook_name)
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
    "env_flag",
    "get_plugin_manager",
    "get_registry",
    "register",
    "reload",
    "source_of",
]


def class_lookup(package: str, kind: str, namespace: dict[str, Any]) -> tuple[Any, Any]:
    """A package's ``__getattr__`` and ``__dir__`` serving the registered classes of ``kind`` by class name.

    What ``from nnic.pruning import LevelPruner`` uses: the registry is the one table of algorithms, so a class is
    importable exactly when it is registered (third-party plugins' classes included).
    """

    def classes() -> dict[str, type]:
        return {info.obj.__name__: info.obj for info in get_registry().list(kind) if isinstance(info.obj, type)}

    def __getattr__(name: str) -> Any:
        if not name.startswith("_"):
            found = classes().get(name)
            if found is not None:
                return found
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(classes()))

    return __getattr__, __dir__
