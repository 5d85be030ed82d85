"""The hooks a plugin can implement: the whole contract between nnic and its plugins.

Write a plugin
--------------
A plugin is a module (or any object) with functions marked ``@nnic.hookimpl`` whose names are the hook names
below. Make it installable and declare it in the ``nnic`` entry-point group of your ``pyproject.toml``::

    [project.entry-points.nnic]
    my_algorithms = "my_package.nnic_plugin"

and in ``my_package/nnic_plugin.py``::

    import nnic

    class MyPruner(nnic.Pruner):
        name = "mine"
        def calculate_masks(self): ...

    @nnic.hookimpl
    def register_pruners(register):
        register(MyPruner)

After ``pip install``, ``nnic.pruner("mine", model, config_list)`` finds it and ``nnic plugins`` lists it.
nnic's own Level pruner and Naive quantizer are plugins of exactly this shape (``nnic/builtins/``), declared in
nnic's own entry points. ``plugins/nnic-example`` is a template to copy. Hooks are documented one by one in
``docs/plugin-hooks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from nnic.registry import Register

hookspec = HookspecMarker("nnic")
hookimpl = HookimplMarker("nnic")


@hookspec
def register_pruners(register: Register) -> None:
    """Register pruner classes.

    :param register: call ``register(PrunerClass, name=None, aliases=())`` once per pruner. The name defaults
        to the class attribute ``name``. Names and aliases are lower-case and unique across installed plugins:
        a clash makes looking that name up raise ``PluginConflictError`` naming both plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizer classes (same contract as :func:`register_pruners`).

    :param register: call ``register(QuantizerClass, name=None, aliases=())`` once per quantizer.

    .. versionadded:: 0.1
    """


@hookspec
def register_speedup_rules(register: Register) -> None:
    """Register speedup rules: how a module type or an op shrinks when channels are removed.

    :param register: call ``register(rule, name=None, aliases=())`` once per rule. The name defaults to the
        rule's ``name`` attribute, by convention the qualified name of what it shrinks, e.g.
        ``"torch.nn.Conv2d"``.

    .. versionadded:: 0.1
    """


@hookspec
def register_lowerings(register: Register) -> None:
    """Register quantized lowerings: how a module type becomes a module that computes in low bits, for
    ``nnic.quantization_speedup``.

    :param register: call ``register(lowering, name=None, aliases=())`` once per lowering: an object with
        ``name`` (by convention the qualified module type, lower-case: ``"torch.nn.linear"``), ``targets`` (the
        module classes it handles) and ``lower(module, layer, context)`` returning the replacement module or a
        string saying why there is none (see :mod:`nnic.quantization.lowering`).

    .. versionadded:: 0.2
    """


@hookspec
def register_strategies(register: Register) -> None:
    """Register search strategies for :func:`nnic.auto_compress`: how the next trial's configuration is chosen.

    :param register: call ``register(StrategyClass, name=None, aliases=())`` once per strategy: a subclass of
        :class:`nnic.auto.Strategy` whose ``sampler(context)`` returns an Optuna sampler. The name defaults to
        the class attribute ``name``; names are unique across installed plugins (a clash raises
        ``PluginConflictError`` naming both plugins when looked up).

    .. versionadded:: 0.2
    """
