"""What pruners and quantizers share: a model, a validated config_list and the layers it selects."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from nnic.selection import LayerConfig, select_layers


class Compressor:
    """Base of :class:`~nnic.pruning.Pruner` and :class:`~nnic.quantization.Quantizer`.

    Subclasses set ``name`` (the registry name), optionally ``aliases``, and ``config_keys`` for the extra
    config_list keys they accept beyond the standard ones.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str]
    config_keys: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config_list = config_list
        self.layers: dict[str, LayerConfig] = select_layers(model, config_list, self.kind, extra_keys=self.config_keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.layers)} layers of {type(self.model).__name__})"
