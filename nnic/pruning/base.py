"""The pruner base class: compute masks, keep them applied while training, export, unwrap."""

from __future__ import annotations

from torch import nn

from nnic import io, masking
from nnic.compressor import Compressor
from nnic.masking import Masks
from nnic.selection import count_nonzero


class Pruner(Compressor):
    """A pruner computes masks for the layers its config_list selects.

    Subclasses implement :meth:`calculate_masks`; :meth:`compress` attaches the masks so that they stay applied
    while the user keeps training (see :mod:`nnic.masking`).
    """

    kind = "pruner"

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list)
        self.masks: Masks = {}

    def calculate_masks(self) -> Masks:
        """``{layer_name: {param_name: bool mask | None}}`` for the selected layers; True keeps."""
        raise NotImplementedError(f"{type(self).__name__} must implement calculate_masks()")

    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute and attach the masks; returns the (same) masked model and the masks."""
        masks = self.checked_masks()
        self.attach(masks)
        return self.model, masks

    def checked_masks(self) -> Masks:
        """The masks :meth:`compress` would attach, computed and checked against the model, nothing attached:
        what a step that consumes the masks at once (:func:`nnic.speedup.prune_and_speedup`) starts from."""
        import torch

        from nnic.channels.collector import collection_paused

        with torch.no_grad(), collection_paused():  # a dependency-aware trace allocates much and frees little
            masks = self.calculate_masks()
            masking.check_masks(self.model, masks)
        return masks

    def attach(self, masks: Masks) -> None:
        """Attach ``masks`` (from :meth:`checked_masks`) as :meth:`compress` does, and keep them as ``self.masks``."""
        from nnic.channels.collector import collection_paused

        from nnic.channels.tracer import submodule

        with collection_paused():  # each parametrization makes a class of its own: allocations, nothing to free
            for layer, per_param in masks.items():
                masking.attach_masks(submodule(self.model, layer),
                                     {pname: mask for pname, mask in per_param.items() if mask is not None})
        self.masks = masks

    def export_model(self, model_path: io.PathLike, mask_path: io.PathLike | None = None) -> None:
        """Write the weights with masks folded in (a plain state dict) and the masks, each atomically.

        ``.safetensors`` paths are written as safetensors, others with ``torch.save``; both load with
        ``torch.load(path, weights_only=True)`` / ``safetensors.torch.load_file``. Both files carry one export id,
        so :func:`nnic.io.load_export` refuses a pair left mixed by an export interrupted between the two files.
        """
        if not self.masks:
            raise RuntimeError("export_model() needs masks: call compress() first")
        export = io.new_export_id()
        io.save_tensors(masking.plain_state_dict(self.model), model_path, export_id=export)
        if mask_path is not None:
            io.save_masks(self.masks, mask_path, export_id=export)

    def unwrap_model(self) -> nn.Module:
        """Plain modules again, with the masks multiplied into the weights; returns the model."""
        for module in self.model.modules():
            masking.fold_masks(module)
        return self.model

    def sparsity(self) -> dict[str, float]:
        """Fraction of zero weights in each pruned parameter, ``{"layer.param": fraction}``."""
        modules = dict(self.model.named_modules())
        report = {}
        for layer, per_param in self.masks.items():
            for pname in (p for p, mask in per_param.items() if mask is not None):
                weight = getattr(modules[layer], pname)
                report[f"{layer}.{pname}"] = 1.0 - count_nonzero(weight) / max(weight.numel(), 1)
        return report
