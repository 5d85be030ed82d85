"""Channel analysis: the floor that dependency-aware pruning and speedup both stand on.

- :mod:`~nnic.channels.capture`: torch.fx capture (leaf modules, inputs of any structure, errors that say where),
  and when fx cannot trace a model, the capture that follows its real execution on the dummy input;
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
from nnic.channels.labels import label_tensor, propagate_by_labels, read_labels, run_on_labels
from nnic.channels.propagate import Propagation, RuleTable, SpeedupError, SpeedupWarning, analyze

__all__ = [
    "Capture", "CaptureError", "Call", "Coupling", "Propagation", "RuleTable", "Spec", "SpeedupError",
    "SpeedupWarning", "State", "analyze", "channel_groups", "coupling", "describe", "label_tensor",
    "propagate_by_labels", "read_labels",
    "run_on_labels", "split_dummy_input", "trace",
]
