"""Pruning: the :class:`Pruner` base class, and every registered pruner importable by its class name.

``from nnic.pruning import LevelPruner`` and ``nnic.pruner("level", ...)`` give the same class: class names are
looked up in the plugin registry (on first use, so ``import nnic`` loads no plugin), not in a table of our own.
"""

from nnic.pruning.base import Pruner
from nnic.plugins import class_lookup

__getattr__, __dir__ = class_lookup(__name__, "pruner", globals())

__all__ = ["Pruner"]
