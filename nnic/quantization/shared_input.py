"""One low-bit GEMM for several layers that read the same input.

A decoder block projects one hidden state three times (``q_proj``, ``k_proj``, ``v_proj``) and, in a gated MLP,
twice more (``gate_proj``, ``up_proj``). Quantized separately, each projection quantizes the same activation
again, pays its own call into the kernels and (for the narrow key/value projections of grouped-query attention)
splits too little work across the threads. :func:`fuse_shared_input` concatenates the layers' output rows into
one :class:`Int4Linear` or :class:`Int8Linear` held by the parent, and puts a :class:`SharedInputPart` in each
layer's place: the first part called runs the one GEMM, the others return their slices of its output.

The result is *exactly* the unfused one: activations are quantized per token (or per tensor, or statically with
the same range) from the same input, and every output column is computed by the same integer products and the
same float epilogue whatever the other columns are. The parent's code is not changed, so this works for any
module whose forward calls the fused layers on one input tensor (which parts share an input is model knowledge:
the caller names them; ``nnic-transformers`` finds them in Hugging Face decoders).
"""

from __future__ import annotations

import torch
from torch import nn

from nnic.quantization.modules import Int4Linear, Int8Linear

_FUSABLE = (Int4Linear, Int8Linear)


class _Latest:
    """The fused output for one input tensor, and which parts have not taken their slice yet (a plain object: it
    changes on every call, and attribute writes on an ``nn.Module`` are slow)."""

    __slots__ = ("input", "version", "outputs", "pending")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.input: torch.Tensor | None = None
        self.version = 0
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.pending: set[int] = set()


class SharedInputLinear(nn.Module):
    """The fused layer ``fused`` (output rows of the parts one after another, ``splits`` of them each) and the
    output of its latest call, kept until every part has taken its slice."""

    def __init__(self, fused: Int4Linear | Int8Linear, splits: list[int]) -> None:
        super().__init__()
        if sum(splits) != fused.out_features or not all(s > 0 for s in splits):
            raise ValueError(f"splits {splits} must be positive and add up to out_features = {fused.out_features}")
        self.fused, self.splits = fused, list(splits)
        self._latest = _Latest()

    def output(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Part ``part``'s output for ``x``: a slice of the fused output computed for this very tensor (unchanged
        since), else of a new fused GEMM. The output is dropped once every part has taken its slice."""
        latest = self._latest
        version = 0 if x.is_inference() else x._version
        if not (x is latest.input and version == latest.version and part in latest.pending):
            latest.outputs = torch.split(self._modules["fused"](x), self.splits, dim=-1)
            latest.input, latest.version, latest.pending = x, version, set(range(len(self.splits)))
        pending = latest.pending
        pending.discard(part)
        y = latest.outputs[part]
        if not pending:
            latest.clear()
        return y

    def extra_repr(self) -> str:
        return f"splits={self.splits}"


class SharedInputPart(nn.Module):
    """Stands where one fused layer was: its output is slice ``index`` of the shared GEMM's output. The shared
    layer is registered on the parent, not here (it would be saved once per part)."""

    def __init__(self, shared: SharedInputLinear, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "shared", shared)  # not a submodule: see the class docstring
        self.index = index
        self.in_features, self.out_features = shared.fused.in_features, shared.splits[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part={self.index}"


def fuse_shared_input(parent: nn.Module, names: list[str], fused_name: str) -> SharedInputLinear:
    """Fuses the layers ``parent.<name>`` for ``name`` in ``names`` (all :class:`Int4Linear` or all
    :class:`Int8Linear`, same input size and the same quantization settings, see below) into one GEMM held as
    ``parent.<fused_name>``; each named layer becomes a :class:`SharedInputPart`. It saves work when ``parent``
    calls them on one input tensor; a part called on another input still gets its exact output (from a fused GEMM
    of its own). One fused model serves one thread at a time: the shared output is per module, not per call.

    Same settings: int4 layers need one group size and one input permutation (GPTQ act-order), int8 layers
    one activation mode (and static range), symmetry and no fused activation. Bias and zero points may differ
    (missing ones are zeros). Raises ``ValueError`` naming the layer that differs, ``TypeError`` for a layer of
    another type, and ``ValueError`` when ``fused_name`` is taken or fewer than two layers are named."""
    where = type(parent).__name__
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{where}: fuse_shared_input needs two or more distinct layer names, got {names}")
    if hasattr(parent, fused_name):
        raise ValueError(f"{where}.{fused_name} already exists: choose another fused_name")
    layers = [getattr(parent, n, None) for n in names]
    first = layers[0]
    for n, lin in zip(names, layers):
        if not isinstance(lin, _FUSABLE) or type(lin) is not type(first):
            raise TypeError(f"{where}.{n}: expected {'an Int4Linear or Int8Linear' if lin is first else type(first).__name__}"
                            f" (as {where}.{names[0]}), got {type(lin).__name__}")
        why = why_not_shared(first, lin)
        if why:
            raise ValueError(f"{where}.{n} cannot share a GEMM with {where}.{names[0]}: {why}")
    fused = _concat_int4(layers) if isinstance(first, Int4Linear) else _concat_int8(layers)
    shared = SharedInputLinear(fused.to(_device(first)), [lin.out_features for lin in layers])
    setattr(parent, fused_name, shared)
    for i, n in enumerate(names):
        setattr(parent, n, SharedInputPart(shared, i))
    return shared


def _device(mod: nn.Module) -> torch.device:
    return next(b for b in mod.buffers()).device


def why_not_shared(a: nn.Module, b: nn.Module) -> str | None:
    """Why ``b`` cannot run in one GEMM with ``a`` (``None`` when it can); both are :class:`Int4Linear` or both
    :class:`Int8Linear`."""
    if type(a) is not type(b) or not isinstance(a, _FUSABLE):
        return f"{type(b).__name__} and {type(a).__name__} are not both Int4Linear or both Int8Linear"
    if a.in_features != b.in_features:
        return f"in_features {b.in_features} != {a.in_features}"
    if isinstance(a, Int4Linear):
        if a.group_size != b.group_size:
            return f"group_size {b.group_size} != {a.group_size}"
        if (a.scale_dtype == torch.uint8) != (b.scale_dtype == torch.uint8):
            return f"scale format {b.scale_dtype} vs {a.scale_dtype} (8-bit scale codes go only with 8-bit ones)"
        pa, pb = a.input_perm, b.input_perm
        if (pa is None) != (pb is None) or (pa is not None and not torch.equal(pa, pb)):
            return "a different input permutation (act order)"
        return None
    if (a.act, a.symmetric, a.reduce_range, a.activation) != (b.act, b.symmetric, b.reduce_range, b.activation) \
            or a.activation is not None:
        return (f"activation quantization / fused activation differ or are set: (act={b.act}, symmetric={b.symmetric}, "
                f"reduce_range={b.reduce_range}, activation={b.activation}) vs (act={a.act}, symmetric={a.symmetric}, "
                f"reduce_range={a.reduce_range}, activation={a.activation})")
    if a.act == "static" and (float(a.act_scale), int(a.act_zero_point)) != (float(b.act_scale), int(b.act_zero_point)):
        return "a different static activation range"
    return None


def _bias(layers: list[nn.Module]) -> torch.Tensor | None:
    if all(lin.bias is None for lin in layers):
        return None
    return torch.cat([torch.zeros(lin.out_features) if lin.bias is None else lin.bias.detach().float().cpu()
                      for lin in layers])


def _concat_int4(layers: list[Int4Linear]) -> Int4Linear:
    a = layers[0]
    affine = any(lin.weight_zero_points is not None for lin in layers)
    n = sum(lin.out_features for lin in layers)
    fused = Int4Linear(a.in_features, n, bias=False, group_size=a.group_size, affine=affine,
                       permuted=a.input_perm is not None, scale_dtype=a.scale_dtype)
    fused.weight_packed = torch.cat([lin.weight_packed.cpu() for lin in layers])
    fused.weight_scales = torch.cat([lin.weight_scales.cpu() for lin in layers])
    if a.weight_scale_step is not None:  # 8-bit scales: each layer's steps stay with its outputs
        fused.weight_scale_step = torch.cat([lin.weight_scale_step.cpu() for lin in layers])
    if affine:
        fused.weight_zero_points = torch.cat([
            torch.zeros_like(lin.weight_scales, dtype=torch.int8) if lin.weight_zero_points is None
            else lin.weight_zero_points.cpu() for lin in layers])
    if a.input_perm is not None:
        fused.input_perm = a.input_perm.cpu().clone()
    fused.bias = _bias(layers)
    return fused


def _concat_int8(layers: list[Int8Linear]) -> Int8Linear:
    a = layers[0]
    static = {"act_scale": float(a.act_scale), "act_zero_point": int(a.act_zero_point)} if a.act == "static" else {}
    fused = Int8Linear(a.in_features, sum(lin.out_features for lin in layers), bias=False, act=a.act,
                       symmetric=a.symmetric, reduce_range=a.reduce_range, **static)
    fused.set_weight(torch.cat([lin.weight.cpu() for lin in layers]),
                     torch.cat([lin.weight_scale.cpu() for lin in layers]),
                     torch.cat([lin.weight_zero_point.cpu() for lin in layers]))
    fused.bias = _bias(layers)
    return fused


__all__ = ["SharedInputLinear", "SharedInputPart", "fuse_shared_input", "why_not_shared"]
