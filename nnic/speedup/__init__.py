"""Speedup: turn masks into a physically smaller model.

``speedup_model(model, dummy_input, masks)`` traces the model with torch.fx, propagates the channel masks through
the graph (residual adds, concatenations, grouped convolutions, reshapes into Linear...), removes every channel
that all its consumers can do without, and replaces modules with smaller ones, in place. Rules for module types
and ops come from plugins (``register_speedup_rules``); see :mod:`nnic.speedup.rules` for the protocol.
"""

from nnic.speedup.api import ModelSpeedup, SpeedupReport, speedup_model
from nnic.speedup.capture import CaptureError
from nnic.speedup.engine import SpeedupError, SpeedupWarning
from nnic.speedup.graph import Call, Spec
from nnic.speedup.rules import ChannelMixRule, PassThroughRule, PerChannelRule, Rule
from nnic.speedup.serialize import load_pruned, save_pruned

__all__ = [
    "CaptureError", "Call", "ChannelMixRule", "ModelSpeedup", "PassThroughRule", "PerChannelRule", "Rule", "Spec",
    "SpeedupError", "SpeedupReport", "SpeedupWarning", "load_pruned", "save_pruned", "speedup_model",
]
