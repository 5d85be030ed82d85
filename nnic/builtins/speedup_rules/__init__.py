"""nnic's built-in speedup rules, registered through the ``register_speedup_rules`` hook like any plugin's.

One module per family: :mod:`.modules` (``torch.nn`` layers), :mod:`.functional` (functions and tensor methods),
:mod:`.attention` (``nn.MultiheadAttention`` and the module that replaces it). A rule for a new op goes into the
family it belongs to here, or, written the same way, into a third-party plugin (see docs/plugin-hooks.md).
"""

from __future__ import annotations

import nnic
from nnic.builtins.speedup_rules.attention import MultiheadAttentionRule
from nnic.builtins.speedup_rules.functional import OP_RULES
from nnic.builtins.speedup_rules.modules import module_rules
from nnic.speedup.rules import Rule


def builtin_rules() -> list[Rule]:
    """Every built-in rule: module rules, attention, then function and method rules."""
    return [*module_rules(), MultiheadAttentionRule(), *OP_RULES]


@nnic.hookimpl
def register_speedup_rules(register) -> None:
    for rule in builtin_rules():
        register(rule)
