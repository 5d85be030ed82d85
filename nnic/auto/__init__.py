"""Automatic compression: find per-layer sparsity, weight bits and the pruner that meet a measured goal.

- :func:`sensitivity` — per-layer (per channel group) score curves under pruning;
- :func:`auto_compress` — an Optuna search, scored on measured results, resumable, shareable between
  processes and machines (:mod:`nnic.auto.storage`);
- :class:`Strategy` — the base of search strategies, registered by plugins through ``register_strategies``.

Optuna, matplotlib and tqdm are the ``auto`` extra (``pip install 'nnic[auto]'``); nothing here is imported by
``import nnic``.
"""

from nnic.auto.goals import CONSTRAINTS, METRICS
from nnic.auto.result import AutoResult, TrialRecord
from nnic.auto.search import auto_compress, load_result
from nnic.auto.sensitivity import SensitivityResult, sensitivity
from nnic.auto.space import Configuration, SearchSpace
from nnic.auto.strategy import Strategy, StrategyContext

__all__ = ["CONSTRAINTS", "METRICS", "AutoResult", "Configuration", "SearchSpace", "SensitivityResult", "Strategy",
           "StrategyContext", "TrialRecord", "auto_compress", "load_result", "sensitivity"]
