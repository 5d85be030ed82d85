"""Pruning: the :class:`Pruner` base class and the built-in pruners, importable by class name.

``from nnic.pruning import LevelPruner`` and ``nnic.pruner("level", ...)`` give the same class.
"""

from nnic._lazy import lazy_getattr
from nnic.pruning.base import Pruner

# Lazy, because the built-in modules import this package's base classes.
_BUILTINS = {
    "LevelPruner": "nnic.builtins.level",
    "L1NormPruner": "nnic.builtins.norm",
    "L2NormPruner": "nnic.builtins.norm",
    "FPGMPruner": "nnic.builtins.norm",
    "SlimPruner": "nnic.builtins.slim",
    "TaylorPruner": "nnic.builtins.taylor",
    "APoZPruner": "nnic.builtins.activation",
    "MeanActivationPruner": "nnic.builtins.activation",
    "NMPruner": "nnic.builtins.nm",
    "check_nm": "nnic.builtins.nm",
    "AGPPruner": "nnic.builtins.scheduled",
    "LinearPruner": "nnic.builtins.scheduled",
    "LotteryTicketPruner": "nnic.builtins.lottery",
    "MovementPruner": "nnic.builtins.movement",
    "ADMMPruner": "nnic.builtins.admm",
    "WandaPruner": "nnic.builtins.wanda",
    "SparseGPTPruner": "nnic.builtins.sparsegpt",
}

__getattr__ = lazy_getattr("nnic.pruning", {name: f"{module}:{name}" for name, module in _BUILTINS.items()})


__all__ = ["Pruner", *_BUILTINS]
