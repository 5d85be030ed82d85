"""Built-in rules for functions and tensor methods: elementwise ops, structural ops (view, permute, cat,
split...), pooling and metadata.

Structural ops are handled by running them on a label tensor (:mod:`nnic.channels.labels`): ops that only move
values return valid labels, from which the output's channel dimension and order are read off.
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from nnic.channels.constants import only_dead, probe_constants
from nnic.channels.graph import Call, NeedsValues, Spec
from nnic.channels.labels import propagate_by_labels
from nnic.speedup.rules import Rule

_MUL = {operator.mul, operator.imul, torch.mul, "Tensor.mul", "Tensor.mul_", "Tensor.__mul__", operator.and_}


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _shape_args(node: fx.Node) -> list[Any]:
    rest = list(node.args[1:])
    if "size" in node.kwargs or "shape" in node.kwargs:
        rest = [node.kwargs.get("size", node.kwargs.get("shape"))]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        return list(rest[0])
    return rest


def _size_source(node: fx.Node) -> tuple[fx.Node, int] | None:
    """``(tensor, dim)`` when ``node`` reads one dimension's size of a tensor (``x.shape[d]``, ``x.size(d)``,
    ``x.size()[d]``), else ``None``."""
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2 and isinstance(node.args[1], int):
        return (node.args[0], node.args[1]) if isinstance(node.args[0], fx.Node) else None
    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[1], int):
        return None
    sizes = node.args[0]
    if not isinstance(sizes, fx.Node):
        return None
    shape_of = (sizes.op == "call_function" and sizes.target is getattr and sizes.args[1] == "shape") or (
        sizes.op == "call_method" and sizes.target == "size" and len(sizes.args) == 1)
    return (sizes.args[0], node.args[1]) if shape_of and isinstance(sizes.args[0], fx.Node) else None


def _literal_size_ok(call: Call, out_dim: int) -> bool:
    """After speedup the user's own code runs: a literal size (not -1, not computed) on the channel dim breaks."""
    shape = _shape_args(call.node)
    if not shape or out_dim >= len(shape):
        return True
    arg = shape[out_dim]
    return isinstance(arg, fx.Node) or arg == -1


def _couple_sizes_of_other_channels(call: Call) -> None:
    """A size read off another tensor's channel dimension (``y.view(b, x.size(1), 1, 1)``, ``out.reshape(B, N,
    x.shape[-1])``) follows *that* tensor's channel count after speedup. A reshaped tensor with as many channels
    loses the same ones (their ids are coupled: the squeeze-excite gate of the channels it scales); one without
    labelled channels (MaxViT's attention output, kept whole) or with another count keeps them all, and the other
    tensor keeps its own, else the user's reshape breaks on the smaller model."""
    own = call.spec(0)
    for arg in _shape_args(call.node):
        source = _size_source(arg) if isinstance(arg, fx.Node) else None
        if source is None:
            continue
        tensor, dim = source
        spec, value = call.state.specs.get(tensor), call.state.values.get(tensor)
        if not isinstance(spec, Spec) or not isinstance(value, torch.Tensor) or _dim(dim, value.ndim) != spec.dim:
            continue
        if own is not None and len(own.ids) == len(spec.ids):
            call.couple(own.ids, spec.ids)
            continue
        why = f"node {call.node.name} sizes a dimension by {tensor.name}'s channel count"
        call.pin(spec, why)
        if own is not None:
            call.pin(own, why)


class MetadataRule(Rule):
    """``x.size()``, ``x.dim()``, ``x.shape``...: read no channel values, keep nothing."""

    name = "ops.metadata"
    value_free = True
    targets = ("Tensor.size", "Tensor.dim", "Tensor.numel", "Tensor.get_device", "Tensor.is_contiguous",
               "Tensor.is_floating_point", torch._assert, builtins.isinstance, builtins.len, builtins.getattr)
    attrs = ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "is_sparse", "layout")

    def propagate(self, call: Call) -> None:
        if call.node.target is getattr and call.node.args[1] not in self.attrs:
            if call.node.args[1] in ("T", "mT", "data"):
                propagate_by_labels(call)
            else:
                call.pin_inputs()


class PointwiseRule(Rule):
    """Elementwise ops with broadcasting: the labelled operands' channels are coupled."""

    name = "ops.pointwise"
    value_free = True
    targets = (
        operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg, operator.pow,
        operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.and_, operator.or_,
        operator.eq, operator.ne, operator.gt, operator.ge, operator.lt, operator.le,
        torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where, torch.clamp,
        torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.neg, torch.abs, torch.sqrt, torch.rsqrt,
        torch.pow, torch.erf, torch.clone, torch.square,
        F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
        F.selu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout2d, F.dropout3d, F.alpha_dropout,
        *(f"Tensor.{m}" for m in (
            "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid", "sigmoid_",
            "tanh", "exp", "neg", "abs", "sqrt", "rsqrt", "pow", "clamp", "clamp_", "clamp_min", "clip",
            "float", "half", "double", "bfloat16", "to", "type_as", "detach", "clone", "contiguous", "masked_fill",
            "__add__", "__radd__", "__mul__", "__rmul__", "__sub__", "__rsub__", "__truediv__", "square",
            "hardtanh_", "erf", "sign", "round", "floor", "ceil", "reciprocal",
        )),
    )

    def propagate(self, call: Call) -> None:
        out = call.output
        if not isinstance(out, torch.Tensor):
            return
        labelled, others = [], []
        for arg in list(call.node.args) + list(call.node.kwargs.values()):
            if not isinstance(arg, fx.Node):
                continue
            v = call.state.values.get(arg)
            if not isinstance(v, torch.Tensor):
                continue
            spec = call.state.specs.get(arg)
            offset = out.ndim - v.ndim
            if isinstance(spec, Spec):
                od = spec.dim + offset
                if offset < 0 or v.shape[spec.dim] != out.shape[od]:
                    call.pin(spec)
                    continue
                labelled.append((arg, v, spec, od))
            else:
                others.append((arg, v, offset))
        if not labelled:
            return
        dims = {od for _, _, _, od in labelled}
        if len(dims) > 1:
            call.pin_inputs()
            return
        od = dims.pop()
        n = out.shape[od]
        ids = labelled[0][2].ids
        dead = torch.ones(n, dtype=torch.bool)
        for _, _, spec, _ in labelled:
            call.couple(ids, spec.ids)
            dead &= spec.dead
        for arg, v, offset in others:
            vd = od - offset
            full = vd >= 0 and v.shape[vd] == n and n > 1
            if full and arg.op == "get_attr":
                call.param_member(arg.target, vd, ids)
            elif full:
                for _, _, spec, _ in labelled:
                    call.pin(spec, f"node {call.node.name}: operand {arg.name} has untracked channels")
                return
            if arg not in call.state.const:
                dead &= False
        zero = torch.zeros(n, dtype=torch.bool)
        if call.node.target in _MUL:
            for arg, v, spec, _ in labelled:
                zero |= call.zero_dead(v, spec)
            dead |= zero
        const = None
        if call.state.value_free and bool(dead.any()):
            const = probe_constants(call, od, n)
            const = torch.full((n,), float("nan"), dtype=torch.float64) if const is None else const
            const = only_dead(torch.where(zero, torch.zeros_like(const), const), dead)  # 0 * anything is 0
        call.set_output(Spec(od, list(ids), dead, const))


class StructuralRule(Rule):
    """Ops that move values without mixing channels: view, reshape, flatten, permute, transpose, squeeze,
    unsqueeze, expand, indexing, and means/maxima over other dimensions."""

    name = "ops.structural"
    value_free = True
    targets = (
        torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.movedim,
        torch.mean, torch.amax, torch.amin, torch.t, torch.swapaxes, torch.unflatten, torch.broadcast_to,
        *(f"Tensor.{m}" for m in (
            "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "expand", "expand_as",
            "movedim", "mean", "amax", "amin", "t", "swapaxes", "unflatten", "view_as", "reshape_as", "repeat",
            "broadcast_to", "narrow", "select", "unbind", "flip", "roll",
        )),
    )
    sized = {"view", "reshape", "expand", "repeat", "broadcast_to"}

    def propagate(self, call: Call) -> None:
        target = call.node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        check = None
        if name in self.sized:
            check = _literal_size_ok
            _couple_sizes_of_other_channels(call)
        if name in ("narrow", "select"):
            check = _never
        if name == "permute" and self._permute(call):
            return
        propagate_by_labels(call, check, first_only=True)
        out = call._output_spec
        if name == "mean" and isinstance(out, Spec):  # a float mean of equal values need not equal them
            call.set_output(out.zero_only())

    @staticmethod
    def _permute(call: Call) -> bool:
        """A permute moves the channel dimension to where the permutation says: no labels needed (it is the
        channels-last block's hot op, on full-size activations)."""
        spec, x = call.spec(0), call.value(0)
        if spec is None or len(call.input_specs()) != 1 or not isinstance(x, torch.Tensor):
            return False
        dims = call.kwargs.get("dims", call.args[1:])
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if not all(isinstance(d, int) for d in dims) or len(dims) != x.ndim:
            return False
        call.set_output(spec.with_const(spec.const, [_dim(d, x.ndim) for d in dims].index(spec.dim)))
        return True


def _never(call: Call, out_dim: int) -> bool:
    return False


class GetItemRule(Rule):
    """``x[...]`` on a tensor (only full slices on the channel dim) or on a tuple/list/dict of tensors."""

    name = "ops.getitem"
    value_free = True
    targets = (operator.getitem,)

    def propagate(self, call: Call) -> None:
        container = call.value(0)
        tree = call.spec_tree(0)
        if not isinstance(container, torch.Tensor):
            if isinstance(tree, (list, tuple, dict)):
                if call.state.value_free and isinstance(call.node.args[1], fx.Node):
                    raise NeedsValues(f"node {call.node.name} indexes a container with a computed index")
                try:
                    call.set_output(tree[call.value(1)])
                except (IndexError, KeyError, TypeError):
                    pass
            return
        spec = call.spec(0)
        if spec is None:
            return
        if not _index_keeps_dim(call.node.args[1], container.ndim, spec.dim):
            call.pin(spec, f"node {call.node.name} indexes into the channel dimension")
            return
        propagate_by_labels(call)


def _index_keeps_dim(index: Any, ndim: int, dim: int) -> bool:
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    d = 0
    for item in items:
        if item is Ellipsis:
            d += ndim - consumed
            continue
        if item is None:
            continue
        if d == dim:
            return isinstance(item, slice) and item == slice(None, None, None)
        if isinstance(item, fx.Node) or not isinstance(item, (int, slice)):
            return False  # advanced indexing moves dimensions
        d += 1
    return True


class CatRule(Rule):
    """``torch.cat``/``torch.stack``: along the channel dim the ids are concatenated, otherwise coupled."""

    name = "ops.cat"
    value_free = True
    targets = (torch.cat, torch.concat, torch.stack)

    def propagate(self, call: Call) -> None:
        out = call.output
        nodes = call.node.args[0]
        if not isinstance(out, torch.Tensor) or not isinstance(nodes, (list, tuple)):
            call.pin_inputs()
            return
        stack = call.node.target is torch.stack
        raw = call.node.args[1] if len(call.node.args) > 1 else call.node.kwargs.get("dim", 0)
        d = _dim(raw, out.ndim)
        pieces = []
        for n in nodes:
            v = call.state.values.get(n) if isinstance(n, fx.Node) else n
            spec = call.state.specs.get(n) if isinstance(n, fx.Node) else None
            spec = spec if isinstance(spec, Spec) else None
            od = None if spec is None else (spec.dim + (1 if stack and spec.dim >= d else 0))
            pieces.append((n, v, spec, od))
        if all(p[2] is None for p in pieces):
            return
        if not stack and any(od == d for *_, od in pieces):
            ids, dead, values = [], [], []
            for n, v, spec, od in pieces:
                if spec is not None and od == d:
                    ids += spec.ids
                    dead.append(spec.dead)
                    values.append(spec.known())
                else:
                    call.pin(spec)
                    fresh = call.new_ids(v.shape[d])
                    call.pin(fresh, f"node {call.node.name}: a concatenated piece has untracked channels")
                    ids += fresh
                    const = not isinstance(n, fx.Node) or n in call.state.const
                    dead.append(torch.full((len(fresh),), const, dtype=torch.bool))
                    values.append(torch.full((len(fresh),), float("nan"), dtype=torch.float64))
            dead = torch.cat(dead)
            call.set_output(Spec(d, ids, dead, only_dead(torch.cat(values), dead) if call.state.value_free else None))
            return
        dims = {od for *_, od in pieces if od is not None}
        if len(dims) > 1:
            call.pin_inputs()
            return
        od = dims.pop()
        first = next(p[2] for p in pieces if p[2] is not None)
        dead = torch.ones(len(first), dtype=torch.bool)
        const = first.known()  # a channel holds one constant if every piece holds that one there
        for n, v, spec, _ in pieces:
            if spec is not None:
                call.couple(first.ids, spec.ids)
                dead &= spec.dead
                const = torch.where(spec.known() == const, const, torch.full_like(const, float("nan")))
            else:
                vd = od - (1 if stack and od > d else 0)
                if isinstance(n, fx.Node) and n.op == "get_attr" and v.shape[vd] == len(first):
                    call.param_member(n.target, vd, first.ids)
                else:
                    call.pin_inputs(f"node {call.node.name}: a piece has untracked channels")
                    return
                if n not in call.state.const:
                    dead &= False
                const = torch.full_like(const, float("nan"))
        call.set_output(Spec(od, list(first.ids), dead, only_dead(const, dead) if call.state.value_free else None))


class SplitRule(Rule):
    """``split``/``chunk``: along the channel dim each piece takes its slice of ids, and every piece must lose
    the same number of channels (so that the user's ``chunk(n)`` still cuts at the right places)."""

    name = "ops.split"
    value_free = True
    targets = (torch.split, torch.chunk, "Tensor.split", "Tensor.chunk")

    def propagate(self, call: Call) -> None:
        spec = call.spec(0)
        outs = call.output
        if spec is None or not isinstance(outs, (tuple, list)):
            return
        x = call.value(0)
        raw = call.node.args[2] if len(call.node.args) > 2 else call.node.kwargs.get("dim", 0)
        d = _dim(raw, x.ndim)
        if d != spec.dim:
            call.set_output(tuple(spec for _ in outs))
            return
        sizes = [o.shape[d] for o in outs]
        how = call.node.args[1] if len(call.node.args) > 1 else None
        name = getattr(call.node.target, "__name__", call.node.target)
        adaptive = "chunk" in str(name) or isinstance(how, fx.Node)
        if not adaptive or len(set(sizes)) > 1:
            call.pin(spec, f"node {call.node.name} splits channels at literal sizes")
            call.set_output(tuple(None for _ in outs))
            return
        pieces, start = [], 0
        for s in sizes:
            pieces.append(spec.take(range(start, start + s)))
            start += s
        call.constraint(_balanced([p.ids for p in pieces], call.node.name))
        call.set_output(tuple(pieces))


def _balanced(parts: list[list[int]], where: str):
    def keep(removed) -> list[int]:
        flags = [[removed(i) for i in part] for part in parts]
        k = min(min(sum(f) for f in flags), min(len(p) for p in parts) - 1)
        out = []
        for part, f in zip(parts, flags):
            count = 0
            for i, r in zip(part, f):
                if r:
                    if count < k:
                        count += 1
                    else:
                        out.append(i)
        return out

    keep.what = f"node {where} splits into pieces that must lose as many channels each"  # type: ignore[attr-defined]
    return keep


_POOL_DIMS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2,
}


_MAX_POOLS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
              F.adaptive_max_pool3d}


def _pad_mode(call: Call) -> tuple[str, float]:
    mode = call.value(2) if len(call.args) > 2 else call.kwargs.get("mode", "constant")
    value = call.value(3) if len(call.args) > 3 else call.kwargs.get("value", None)
    return mode, 0.0 if value is None else value


def spatial_constants(spec: Spec, exact: bool, pad: tuple[str, float] | None = None) -> Spec:
    """A spatial op's output constants: a max pool's (or a padding that repeats the input's values) are the
    input's; averaging, resampling and zero padding keep only the zeros; padding with another value, none."""
    if pad is not None:
        mode, value = pad
        if mode != "constant":
            return spec
        return spec.zero_only() if value == 0 else spec.with_const(None)
    return spec if exact else spec.zero_only()


class SpatialRule(Rule):
    """Pooling, interpolation and padding: they act on the trailing (spatial) dimensions only."""

    name = "ops.spatial"
    value_free = True
    targets = (*_POOL_DIMS, F.interpolate, F.pad, F.pixel_shuffle, F.pixel_unshuffle)

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        target = call.node.target
        if target is F.pad:
            pad = call.value(1) if len(call.args) > 1 else call.kwargs.get("pad")
            k = len(pad) // 2
        elif target in (F.pixel_shuffle, F.pixel_unshuffle):
            call.pin(spec)
            return
        else:
            k = _POOL_DIMS.get(target, x.ndim - 2)
        if spec.dim >= x.ndim - k:
            call.pin(spec, f"node {call.node.name} acts on the channel dimension")
            return
        out = call.output
        if call.state.value_free:
            spec = spatial_constants(spec, target in _MAX_POOLS, _pad_mode(call) if target is F.pad else None)
        if isinstance(out, tuple):  # max pooling with indices
            call.set_output(tuple(spec for _ in out))
        else:
            call.set_output(spec)


class SoftmaxRule(Rule):
    """Softmax-like ops mix channels only along their ``dim``."""

    name = "ops.softmax"
    value_free = True
    targets = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "Tensor.softmax", "Tensor.log_softmax",
               torch.cumsum, "Tensor.cumsum", F.normalize)

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        raw = call.value(1) if len(call.args) > 1 else call.kwargs.get("dim", 1 if call.node.target is F.normalize else None)
        if raw is None or _dim(raw, x.ndim) == spec.dim:
            call.pin(spec, f"node {call.node.name} mixes channels")
            return
        call.set_output(spec.with_const(None) if call.state.value_free else spec)


class LayerNormOpRule(Rule):
    """``F.layer_norm``/``F.group_norm`` as functions: they mix the normalised dimensions."""

    name = "ops.layer_norm"
    value_free = True
    targets = (F.layer_norm,)

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        shape = call.value(1)
        if spec.dim >= x.ndim - len(shape) or len(call.input_specs()) > 1:
            call.pin_inputs(f"node {call.node.name} normalises over the channel dimension")
            return
        call.set_output(spec.with_const(None) if call.state.value_free else spec)


class SumRule(Rule):
    """``sum``: over other dims the channels pass; over the channel dim, zero channels can go (a sink)."""

    name = "ops.sum"
    value_free = True
    targets = (torch.sum, "Tensor.sum")

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        raw = call.value(1) if len(call.args) > 1 else call.kwargs.get("dim")
        keepdim = call.value(2) if len(call.args) > 2 else call.kwargs.get("keepdim", False)
        dims = None if raw is None else {_dim(d, x.ndim) for d in (raw if isinstance(raw, (list, tuple)) else [raw])}
        if dims is None or not dims or spec.dim in dims:
            call.sink(spec.ids, call.zero_dead(x, spec))
            return
        shift = 0 if keepdim else sum(1 for d in dims if d < spec.dim)
        kept = spec.zero_only()  # a float sum of a constant need not be a multiple of it; of zeros it is zero
        call.set_output(kept.with_const(kept.const, spec.dim - shift))


OP_RULES = (SumRule(), MetadataRule(), PointwiseRule(), StructuralRule(), GetItemRule(), CatRule(), SplitRule(),
            SpatialRule(), SoftmaxRule(), LayerNormOpRule())

__all__ = ["OP_RULES", "spatial_constants"]
