"""Compatibility name: graph capture lives in :mod:`nnic.channels.capture` (``nnic.speedup.flops`` and older
plugins import it from here)."""

from nnic.channels.capture import CaptureError, split_dummy_input, trace

__all__ = ["CaptureError", "split_dummy_input", "trace"]
