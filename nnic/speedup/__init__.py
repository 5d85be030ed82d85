"""Speedup: turn masks into a physically smaller model.

``speedup_model(model, dummy_input, masks)`` traces the model and propagates the channel masks through the graph
(:mod:`nnic.channels`: residual adds, concatenations, grouped convolutions, reshapes into Linear...), removes
every channel that all its consumers can do without, and replaces modules with smaller ones, in place
(``prune_and_speedup(pruner)``: a pruner's masks straight into speedup, without attaching them first). Rules
for module types and ops come from plugins (``register_speedup_rules``; nnic's own in
:mod:`nnic.builtins.speedup_rules`); :mod:`nnic.speedup.rules` holds the protocol and the bases they build on.
"""

from nnic.channels.capture import CaptureError
from nnic.channels.graph import Call, Spec
from nnic.channels.propagate import SpeedupError, SpeedupWarning
from nnic.speedup.api import KeptGroup, ModelSpeedup, SpeedupReport, speedup_model
from nnic.speedup.fused import Pruned, prune_and_speedup
from nnic.speedup.rules import ChannelMixRule, PassThroughRule, PerChannelRule, Rule
from nnic.speedup.serialize import load_pruned, save_pruned

__all__ = [
    "CaptureError", "Call", "ChannelMixRule", "ModelSpeedup", "PassThroughRule", "PerChannelRule", "Rule", "Spec",
    "KeptGroup", "Pruned", "SpeedupError", "SpeedupReport", "SpeedupWarning", "load_pruned", "prune_and_speedup",
    "save_pruned", "speedup_model",
]
