"""``nnic.prune_and_speedup``: a pruner's masks turned into a smaller model in one step.

Why a helper: ``pruner.compress()`` attaches every mask as a parametrization so that the masks stay applied
while the user trains, and ``speedup_model`` folds them straight back out before it analyses the model. When
nothing happens in between (prune, then shrink at once: no fine-tuning with the masks), attaching and folding
are work whose result nobody reads: 0.03-0.1 s of a torchvision classifier's 0.3-0.7 s (see
docs/performance/pruning-depth.md). The helper hands the masks to speedup directly, which multiplies them into
the weights after taking the snapshot it restores on failure. The result is the model ``compress()`` then
``speedup_model`` give, verified the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from nnic.channels import reuse
from nnic.masking import Masks
from nnic.pruning.base import Pruner
from nnic.speedup.api import ModelSpeedup, SpeedupReport


class Pruned(NamedTuple):
    """What :func:`prune_and_speedup` gives: the model (the same object, shrunk), the pruner's masks (over the
    original shapes, as ``compress()`` returns them) and speedup's report (what it removed, and why it kept any
    masked channels)."""

    model: nn.Module
    masks: Masks
    report: SpeedupReport


def prune_and_speedup(pruner: Pruner, dummy_input: Any = None, **kwargs: Any) -> Pruned:
    """Prune with ``pruner`` and physically remove what it prunes: ``model, masks, report =
    nnic.prune_and_speedup(pruner)``, the model already shrunk.

    :param pruner: any nnic pruner. Pruners that keep the base ``compress`` (the structured and magnitude ones)
        skip the mask parametrizations that ``compress()`` attaches and speedup would fold again at once;
        others run their own ``compress()`` first.
    :param dummy_input: the speedup's input (see :class:`~nnic.speedup.ModelSpeedup`); by default the pruner's
        own ``dummy_input`` (a dependency-aware pruner has one).
    :param kwargs: the keyword arguments of :class:`~nnic.speedup.ModelSpeedup` (``verify``, ``strict``...).

    If speedup fails (it raises, and restores the model), the model is left as ``pruner.compress()`` leaves
    it: the masks attached, ``pruner.masks`` set, so the masked model can still be trained or exported.
    """
    if not isinstance(pruner, Pruner):
        raise TypeError(f"pruner: expected an nnic Pruner (nnic.pruner(name, model, config_list)), got "
                        f"{type(pruner).__name__}")
    if dummy_input is None:
        dummy_input = getattr(pruner, "dummy_input", None)
        if dummy_input is None:
            raise ValueError(f"dummy_input: {type(pruner).__name__} has none of its own; pass the model's input "
                             f"(a tensor, a tuple of positional arguments or a dict of keyword arguments)")
    if type(pruner).compress is not Pruner.compress:  # a pruner with its own compress: its own steps first
        model, masks = pruner.compress()
        speedup = ModelSpeedup(model, dummy_input, masks, **kwargs)
        speedup.speedup_model()
        return Pruned(model, masks, speedup.report)
    # The model is held still between the pruner's analysis and speedup's: only weight values change, so one
    # fingerprint walk does. (The collector pauses in each step, not across both: one collection after both
    # traverses more live objects than the two do, ResNet-50 282 against 271 ms.)
    with reuse.held(pruner.model):
        masks = pruner.checked_masks()
        try:
            speedup = ModelSpeedup(pruner.model, dummy_input, masks, **kwargs)
            # The masks are attached below if it fails (values under them need no copy), and were just checked.
            speedup._run(remasked=True, checked=True)
        except BaseException:
            pruner.attach(masks)  # speedup put the model back as it was given: mask it as compress() would
            raise
    pruner.masks = masks
    return Pruned(pruner.model, masks, speedup.report)


__all__ = ["Pruned", "prune_and_speedup"]
