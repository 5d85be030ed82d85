"""Channel analysis: the floor that dependency-aware pruning and speedup both stand on.

- :mod:`~nnic.channels.capture`: how a model is captured, fx first, then the fallbacks below, and what was not analysed;
- :mod:`~nnic.channels.tracer`: nnic's fx tracer (leaf modules), the dummy input's arguments, :class:`CaptureError`;
- :mod:`~nnic.channels.tracing`: the fx path (inputs of any structure, errors that say where);
- :mod:`~nnic.channels.concrete`: fx tracing along the dummy input (Python branches follow the example);
- :mod:`~nnic.channels.execution`: the real run's recorded calls, and the check that a graph reproduces them;
- :mod:`~nnic.channels.regions`: the largest submodules that trace, when the whole model does not;
- :mod:`~nnic.channels.graph`: channel ids (union-find), :class:`Spec` labels, the :class:`Call` rules receive;
- :mod:`~nnic.channels.labels`: label tensors, to read how structural ops move channels;
- :mod:`~nnic.channels.propagate`: the rule table and the propagation over the traced graph;
- :mod:`~nnic.channels.groups`: coupled output channels, for dependency-aware pruning;
- :mod:`~nnic.channels.reuse`: the symbolic graph of a model, kept so that the speedup after dependency-aware
  pruning does not trace the same model again.

This package imports nothing above it (not the registry, not pruning, not speedup): whoever calls it hands
the rules down as an argument.
"""

from nnic.channels.capture import Capture, CaptureError, split_dummy_input, trace
from nnic.channels.graph import Call, Spec, State, describe
from nnic.channels.groups import Coupling, channel_groups, coupling
from nnic.channels.labels import (
    label_tensor,
    propagate_by_labels,
    read_labels,
    run_on_labels,
)
from nnic.channels.propagate import (
    Propagation,
    RuleTable,
    SpeedupError,
    SpeedupWarning,
    analyze,
)

__all__ = [
    "Capture", "CaptureError", "Call", "Coupling", "Propagation", "RuleTable", "Spec", "SpeedupError",
    "SpeedupWarning", "State", "analyze", "channel_groups", "coupling", "describe", "label_tensor",
    "propagate_by_labels", "read_labels",
    "run_on_labels", "split_dummy_input", "trace",
]
