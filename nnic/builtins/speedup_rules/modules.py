"""Built-in speedup rules for ``torch.nn`` modules (and torchvision's StochasticDepth): how each propagates
channels and how it shrinks. Names are the lower-cased qualified names of what each rule shrinks
(``torch.nn.conv2d``). ``shape_attrs`` lists the attributes a shrink changes, which are the only ones a saved
manifest may change when it is loaded (:func:`nnic.speedup.load_pruned`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnic.builtins.speedup_rules.functional import spatial_constants
from nnic.channels.graph import Call, Spec
from nnic.channels.labels import propagate_by_labels
from nnic.builtins.speedup_rules.layer_norm import LayerNormRule
from nnic.speedup.rules import (ChannelMixRule, PassThroughRule, PerChannelRule, Rule, block_usage, nonzero_kernels,
                                slice_param)


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=requires_grad)


def _all(index: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if index is None else index


def shrink_conv(m: nn.Module, keep: dict[str, torch.Tensor], transposed: bool) -> nn.Module:
    """Keep input/output channels of a (transposed) conv, groups included; updates it in place."""
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    ip, op = cin // g, cout // g
    kin, kout = _all(keep.get("in"), cin), _all(keep.get("out"), cout)
    w = m.weight.detach()
    dev = w.device
    if g == 1:  # one copy per sliced dimension, none for a dimension kept whole
        rows, cols = (keep.get("in"), keep.get("out")) if transposed else (keep.get("out"), keep.get("in"))
        if rows is not None:
            w = w.index_select(0, rows.to(dev))
        if cols is not None:
            w = w.index_select(1, cols.to(dev))
        new_groups = 1
    else:  # kept groups keep equal numbers of inputs and outputs: one gather for all of them
        gin, gout = kin // ip, kout // op
        # The balance check on a few hundred group numbers, in numpy (torch's unique sorts, 100+ us a call).
        gin_np, gout_np = gin.cpu().numpy(), gout.cpu().numpy()
        kept_groups = np.unique(gout_np)
        n = len(kept_groups)
        per_in, per_out = len(kin) // n, len(kout) // n
        balanced = (np.array_equal(np.unique(gin_np), kept_groups) and per_in * n == len(kin)
                    and per_out * n == len(kout)
                    and bool((np.bincount(gin_np, minlength=g)[kept_groups] == per_in).all())
                    and bool((np.bincount(gout_np, minlength=g)[kept_groups] == per_out).all()))
        if not balanced:
            raise RuntimeError(f"speedup: unbalanced groups for {type(m).__name__} (internal error)")
        if transposed:  # [in, out/groups, *k]
            cols = (kout - gout * op).reshape(n, per_out).repeat_interleave(per_in, 0)
            w = w[kin.to(dev)[:, None], cols.to(dev)]
        else:
            cols = (kin - gin * ip).reshape(n, per_in).repeat_interleave(per_out, 0)
            w = w[kout.to(dev)[:, None], cols.to(dev)]
        new_groups = n
    fresh = w.data_ptr() != m.weight.data_ptr()  # indexing made a new tensor: no second copy
    m.weight = nn.Parameter(w.detach() if fresh else w.detach().clone(), requires_grad=m.weight.requires_grad)
    if m.bias is not None and "out" in keep:
        slice_param(m, "bias", kout, 0)
    m.in_channels, m.out_channels, m.groups = len(kin), len(kout), new_groups
    return m


class ConvRule(ChannelMixRule):
    """Conv1d/2d/3d, groups and depthwise included."""

    shape_attrs = ("in_channels", "out_channels", "groups")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def __init__(self, cls: type) -> None:
        self.targets = (cls,)
        self.name = f"torch.nn.{cls.__name__.lower()}"

    def in_dim(self, module, x):
        return 1 if x.ndim == module.weight.ndim else 0

    out_dim = in_dim

    def usage(self, module):
        return block_usage(*self.grouped_usage(module), module.in_channels)

    def grouped_usage(self, module):
        return nonzero_kernels(module.weight), module.groups

    def can_fold(self, module, x):
        pad = module.padding
        return module.groups == 1 and (pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in pad)))

    def fold(self, module, slot, positions, values):
        w = module.weight.detach().double()[:, positions.to(module.weight.device)].flatten(2).sum(2)
        _add_bias(module, w @ values.to(w.device), module.out_channels)

    def shrink(self, module, keep):
        return shrink_conv(module, keep, transposed=False)


class ConvTransposeRule(ConvRule):
    """ConvTranspose1d/2d/3d (weight ``[in, out/groups, *k]``), groups included; never folds constants."""

    def grouped_usage(self, module):
        g = module.groups
        local_t = nonzero_kernels(module.weight)  # [in, out/g]
        ip = module.in_channels // g
        return local_t.reshape(g, ip, -1).transpose(1, 2).reshape(module.out_channels, ip), g

    def can_fold(self, module, x):
        return False

    def shrink(self, module, keep):
        return shrink_conv(module, keep, transposed=True)


def _add_bias(module: nn.Module, delta: torch.Tensor, n: int) -> None:
    ref = module.weight
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(n, dtype=ref.dtype, device=ref.device), requires_grad=ref.requires_grad)
    with torch.no_grad():
        module.bias.add_(delta.to(module.bias.dtype))


class LinearRule(ChannelMixRule):
    name = "torch.nn.linear"
    targets = (nn.Linear,)
    shape_attrs = ("in_features", "out_features")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def usage(self, module):
        return nonzero_kernels(module.weight)

    def can_fold(self, module, x):
        return True

    def fold(self, module, slot, positions, values):
        w = module.weight.detach().double()[:, positions.to(module.weight.device)]
        _add_bias(module, w @ values.to(w.device), module.out_features)

    def shrink(self, module, keep):
        kin, kout = keep.get("in"), keep.get("out")
        w = module.weight.detach()
        if kout is not None:
            w = w.index_select(0, kout.to(w.device))
            slice_param(module, "bias", kout, 0)
        if kin is not None:
            w = w.index_select(1, kin.to(w.device))
        fresh = w.data_ptr() != module.weight.data_ptr()  # one copy per sliced dimension, no third one
        module.weight = nn.Parameter(w if fresh else w.clone(), requires_grad=module.weight.requires_grad)
        module.out_features, module.in_features = w.shape
        return module


class BilinearRule(Rule):
    name = "torch.nn.bilinear"
    targets = (nn.Bilinear,)
    shape_attrs = ("in1_features", "in2_features", "out_features")
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def propagate(self, call: Call) -> None:
        m = call.module
        nz = (m.weight.detach() != 0).cpu()
        u1, u2 = nz.any(2), nz.any(1)
        ids_out = call.slot("out", m.out_features)
        deads = []
        for k, (slot, usage) in enumerate((("in1", u1), ("in2", u2))):
            x, spec = call.value(k), call.spec(k)
            ids = call.slot(slot, usage.shape[1])
            if spec is not None and spec.dim == x.ndim - 1:
                call.couple(ids, spec.ids)
                zero = call.zero_dead(x, spec)
                call.sink(ids, ~usage.any(0) | zero, slot=slot)
                deads.append(spec.dead)
            else:
                call.pin(ids)
                deads.append(torch.full((len(ids),), call.is_const(k), dtype=torch.bool))
        dead = ((~u1 | deads[0]).all(1) & (~u2 | deads[1]).all(1)) | ~u1.any(1)
        call.set_output(Spec(call.output.ndim - 1, ids_out, dead))

    def shrink(self, module, keep):
        w = module.weight.detach()
        for dim, slot in ((0, "out"), (1, "in1"), (2, "in2")):
            if keep.get(slot) is not None:
                w = w.index_select(dim, keep[slot].to(w.device))
        if keep.get("out") is not None:
            slice_param(module, "bias", keep["out"], 0)
        module.weight = _param(w, module.weight.requires_grad)
        module.out_features, module.in1_features, module.in2_features = w.shape
        return module


class EmbeddingRule(Rule):
    """Embedding/EmbeddingBag: the embedding dimension is a new channel dim; a zero column is dead."""

    shape_attrs = ("embedding_dim",)
    shrink_in_place = False  # its shrink replaces the tensors it slices
    value_free = True

    def __init__(self, cls: type) -> None:
        self.targets = (cls,)
        self.name = f"torch.nn.{cls.__name__.lower()}"

    def propagate(self, call: Call) -> None:
        m, y = call.module, call.output
        ids = call.slot("out", m.embedding_dim)
        dead = (m.weight.detach() == 0).all(0).cpu()
        const = torch.where(dead, 0.0, float("nan")).double() if call.state.value_free and bool(dead.any()) else None
        call.set_output(Spec(y.ndim - 1, ids, dead, const))

    def shrink(self, module, keep):
        slice_param(module, "weight", keep.get("out"), 1)
        module.embedding_dim = module.weight.shape[1]
        return module


class NormRule(PerChannelRule):
    """BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, SyncBatchNorm: per-channel on dim 1."""

    params = ("weight", "bias", "running_mean", "running_var")
    count_attr = "num_features"
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def __init__(self, cls: type) -> None:
        self.targets = (cls,)
        self.name = f"torch.nn.{cls.__name__.lower()}"

    def exact_on_probe(self, module):
        # Running statistics: an affine map per channel (instance or batch statistics read the input).
        return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None \
            and module.running_var is not None and not module.training


class PReLURule(PerChannelRule):
    name = "torch.nn.prelu"
    targets = (nn.PReLU,)
    params = ("weight",)
    count_attr = "num_parameters"
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def is_per_channel(self, module):
        return module.num_parameters > 1


class GroupNormRule(PerChannelRule):
    """GroupNorm: statistics are shared within a group, so only whole groups are removed."""

    name = "torch.nn.groupnorm"
    targets = (nn.GroupNorm,)
    shape_attrs = ("num_channels", "num_groups")
    params = ("weight", "bias")
    count_attr = "num_channels"
    shrink_in_place = False  # its shrink replaces the tensors it slices

    def propagate(self, call: Call) -> None:
        super().propagate(call)
        spec = call._output_spec
        m = call.module
        if not isinstance(spec, Spec) or call.spec(0) is None:
            return
        per = m.num_channels // m.num_groups
        dead = call.spec(0).dead.reshape(m.num_groups, per).all(1).repeat_interleave(per)
        if m.affine:
            dead = dead | (m.weight.detach() == 0).cpu()
        call.set_output(Spec(spec.dim, spec.ids, dead))
        ids = call.slot("c", m.num_channels)
        groups = [ids[j * per:(j + 1) * per] for j in range(m.num_groups)]

        def whole_groups(removed):
            return [i for g in groups if not all(removed(x) for x in g) for i in g]

        whole_groups.what = f"{call.name} removes whole groups only"  # type: ignore[attr-defined]
        call.constraint(whole_groups)

    def shrink(self, module, keep):
        per = module.num_channels // module.num_groups
        super().shrink(module, keep)
        module.num_groups = module.num_channels // per
        return module


class SpatialModuleRule(Rule):
    """Pooling, padding and upsampling modules: they act on the trailing (spatial) dimensions only."""

    name = "torch.nn.pooling"
    value_free = True

    def __init__(self) -> None:
        names = ["MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "LPPool", "ZeroPad", "ConstantPad",
                 "ReflectionPad", "ReplicationPad", "CircularPad", "FractionalMaxPool"]
        self.dims = {}
        for n in names:
            for k in (1, 2, 3):
                cls = getattr(nn, f"{n}{k}d", None)
                if cls is not None:
                    self.dims[cls] = k
        self.targets = (*self.dims, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        k = self.dims.get(type(call.module), x.ndim - 2)
        if spec.dim >= x.ndim - k:
            call.pin(spec, f"{call.name} acts on the channel dimension")
            return
        out = call.output
        if call.state.value_free:
            m = call.module
            pad = None
            if "Pad" in type(m).__name__:
                pad = ("constant", float(getattr(m, "value", 0.0))) if hasattr(m, "value") or "Zero" in type(m).__name__ \
                    else ("repeat", 0.0)
            spec = spatial_constants(spec, "MaxPool" in type(m).__name__, pad)
        call.set_output(tuple(spec for _ in out) if isinstance(out, tuple) else spec)


class FlattenRule(Rule):
    name = "torch.nn.flatten"
    targets = (nn.Flatten, nn.Unflatten)
    value_free = True

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is not None and isinstance(call.module, nn.Unflatten):
            if spec.dim == (call.module.dim % x.ndim):
                call.pin(spec, f"{call.name} unflattens the channel dimension to literal sizes")
                return
        propagate_by_labels(call)


class SoftmaxModuleRule(Rule):
    name = "torch.nn.softmax"
    targets = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
    value_free = True

    def propagate(self, call: Call) -> None:
        spec, x = call.spec(0), call.value(0)
        if spec is None:
            return
        dim = call.module.dim
        if dim is None or dim % x.ndim == spec.dim:
            call.pin(spec, f"{call.name} mixes channels")
            return
        call.set_output(spec.with_const(None) if call.state.value_free else spec)


_ACTIVATIONS = tuple(getattr(nn, n) for n in (
    "ReLU", "ReLU6", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "SELU",
    "CELU", "Mish", "Softplus", "Hardtanh", "Tanhshrink", "Softsign", "LogSigmoid", "Hardshrink", "Softshrink",
    "Threshold", "RReLU", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "Identity",
) if hasattr(nn, n))


class ActivationRule(PassThroughRule):
    """Elementwise modules (activations, dropout, identity): channels pass through unchanged."""

    name = "torch.nn.activation"
    targets = _ACTIVATIONS


def torchvision_rules() -> list[Rule]:
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth
    except Exception:  # torchvision is optional
        return []
    rule = PassThroughRule()
    rule.name, rule.targets = "torchvision.ops.stochasticdepth", (StochasticDepth, stochastic_depth)
    return [rule]


def module_rules() -> list[Rule]:
    rules: list[Rule] = [ConvRule(c) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)]
    rules += [ConvTransposeRule(c) for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)]
    rules += [LinearRule(), BilinearRule(), EmbeddingRule(nn.Embedding), EmbeddingRule(nn.EmbeddingBag)]
    rules += [NormRule(c) for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                                    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)]
    rules += [PReLURule(), GroupNormRule(), LayerNormRule(), SpatialModuleRule(), FlattenRule(),
              SoftmaxModuleRule(), ActivationRule()]
    return rules + torchvision_rules()
