"""Building what a checked recipe names: the model, the example input, the data."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnic.recipe.data import Data
from nnic.recipe.errors import RecipeError


def import_object(path: str, where: str) -> Any:
    """``"package.module:attribute"`` (dotted attributes allowed) -> the object; errors name the recipe key."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"{where}: cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RecipeError(f"{where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RecipeError(f"{where}: {path} is not callable")
    return obj


def resolve_path(base_dir: Path, text: str) -> Path:
    """``text`` as a path; a relative one is relative to the recipe's folder."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p


def build_fresh_model(spec: dict[str, Any], base_dir: Path, source: str) -> nn.Module:
    """A model built by code from ``spec`` (the recipe's normalised ``model`` section: a factory, a torchvision
    name or a Hugging Face config, optionally with saved weights), in eval mode."""
    kwargs = spec.get("kwargs", {})
    if "factory" in spec:
        model = import_object(spec["factory"], f"{source}: model.factory")(**kwargs)
    elif "torchvision" in spec:
        try:
            import torchvision
        except ImportError:
            raise RecipeError(f"{source}: model.torchvision needs torchvision installed") from None
        try:
            model = torchvision.models.get_model(spec["torchvision"], weights=None, **kwargs)
        except ValueError as exc:
            raise RecipeError(f"{source}: model.torchvision: {exc}") from None
    elif "huggingface" in spec:
        model = _huggingface(spec["huggingface"], source)
    else:
        raise RecipeError(f"{source}: model: a saved model is loaded by nnic.recipe.artifacts.build_model")
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{source}: model: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if "weights" in spec:
        from nnic import io

        state = io.load_tensors(resolve_path(base_dir, spec["weights"]))
        model.load_state_dict(state)
    return model.eval()


def _huggingface(spec: dict[str, Any], source: str) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise RecipeError(f"{source}: model.huggingface needs transformers installed") from None
    config = transformers.AutoConfig.for_model(spec["model_type"], **spec["config"])
    cls = getattr(transformers, spec["class"], None)
    if cls is None:
        raise RecipeError(f"{source}: model.huggingface.class: transformers has no {spec['class']!r}")
    return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


def build_example_input(spec: dict[str, Any], source: str, seed: int) -> Any:
    """The example input: random values of the given shape (seeded), or what the factory returns."""
    if "factory" in spec:
        return import_object(spec["factory"], f"{source}: example_input.factory")(**spec["kwargs"])
    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        return torch.randn(spec["shape"], generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, spec["shape"], generator=generator).bool()
    return torch.randint(0, spec["high"], spec["shape"], generator=generator, dtype=dtype)


def build_data(spec: dict[str, Any] | None, source: str) -> Data | None:
    if spec is None:
        return None
    made = import_object(spec["factory"], f"{source}: data.factory")(**spec["kwargs"])
    if isinstance(made, dict):
        try:
            made = Data(**made)
        except TypeError as exc:
            raise RecipeError(f"{source}: data.factory returned a dict that is not Data's fields: {exc}") from None
    if not isinstance(made, Data):
        raise RecipeError(f"{source}: data.factory must return nnic.recipe.Data (or a dict of its fields), "
                          f"got {type(made).__name__}")
    return made
