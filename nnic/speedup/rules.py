"""The speedup rule protocol, and reusable bases for the common shapes of rules.

A rule is an object with:

- ``name``: its registry name, by convention the qualified name of what it shrinks (``"torch.nn.Conv2d"``);
- ``targets``: what it handles: module classes, functions (``torch.cat``, ``operator.add``) or method names
  written ``"Tensor.view"``;
- ``propagate(call)``: called once per call of a target during propagation, with a :class:`~nnic.channels.graph.Call`
  giving the real input and output values of the masked model and the inputs' channel specs. It declares the
  output's spec (``call.set_output``), unites coupled channels (``call.couple``), says which input channels it can
  drop (``call.sink``), keeps channels it cannot handle (``call.pin``) and adds constraints (``call.constraint``).
  Module rules name their channel dimensions with *slots* (``call.slot("in", n)``): the same ids on every call.
- ``shrink(module, keep)`` (module rules): ``keep`` maps each slot that loses channels to the sorted ``LongTensor``
  of kept positions; return the smaller module (the same object changed in place, or a new one). Writing into
  the module's tensors in place is allowed: speedup copies them first for the restore on failure.
- ``shrink_in_place`` (default ``True``): whether ``shrink`` may write into the module's existing tensors. A rule
  whose ``shrink`` only replaces them (``slice_param``, new parameters or modules) says ``False``, and speedup
  skips that copy.
- ``fold(module, slot, positions, values)`` (optional): add constant input channels that are about to be removed
  into the bias, for sinks that said ``fold`` in :meth:`~nnic.channels.graph.Call.sink`.

- ``value_free`` (default ``False``): whether ``propagate`` also works in a value-free propagation (speedup
  without the masked model's forward): it reads only shapes, dtypes, literals and the module's parameters from
  the call's values (which are then the trace's, of the unmasked model), asks about dead channels only through
  ``call.zero_dead``/``call.dead_stats``, and gives each output spec's dead channels their constant
  (:attr:`~nnic.channels.graph.Spec.const`, see :mod:`nnic.channels.constants`) where it can. A propagation
  meeting a rule without it runs on the masked model's values instead.
- ``shape_attrs`` (module rules): the attributes ``shrink`` changes (``("in_features", "out_features")``); a saved
  manifest may change these, and only these, when :func:`~nnic.speedup.load_pruned` applies it.

A rule whose module changes class when shrunk gives the new class ``from_manifest(attrs)`` and
``manifest_attrs()`` so that the pruned architecture can be saved and loaded without pickling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nnic.channels.constants import only_dead, probe_constants, uniform_along
from nnic.channels.graph import Call, Spec, flags, id_array, values_of


class Rule:
    """Base class (optional: any object with the same attributes works)."""

    name: str = ""
    targets: tuple[Any, ...] = ()
    shape_attrs: tuple[str, ...] = ()
    shrink_in_place: bool = True
    value_free: bool = False

    def propagate(self, call: Call) -> None:
        raise NotImplementedError

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        return module

    def __repr__(self) -> str:
        return f"<speedup rule {self.name}>"


class PassThroughRule(Rule):
    """Elementwise modules and ops: the output carries the input's channels unchanged (ReLU, Dropout...); a
    dead channel's constant is the op's value on it (a probe)."""

    value_free = True

    def propagate(self, call: Call) -> None:
        spec = call.spec(0)
        out = _same_dim(spec, call.value(0), call.output)
        if out is not None and call.state.value_free:
            out = out.with_const(only_dead(probe_constants(call, out.dim, len(out)), out.dead))
        call.set_output(out)


def _same_dim(spec: Spec | None, x: Any, out: Any) -> Spec | None:
    if spec is None or not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return None
    if out.ndim != x.ndim or out.shape[spec.dim] != x.shape[spec.dim]:
        return None
    return spec


def _unknown_values(call: Call, spec: Spec | None) -> Spec | None:
    """``spec`` for an output whose values the rule does not follow (a value-free propagation's constants
    are then unknown)."""
    return spec.with_const(None) if spec is not None and call.state.value_free else spec


def slice_param(module: nn.Module, name: str, index: torch.Tensor | None, dim: int) -> None:
    """Replace ``module.<name>`` (parameter or buffer) by its slice along ``dim``, keeping its kind."""
    if index is None:
        return
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device))  # a new tensor already: no second copy
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


class PerChannelRule(Rule):
    """Modules that act on each channel of dim 1 separately, with per-channel parameters (BatchNorm...).

    ``params`` names the per-channel parameters and buffers; ``count_attr`` the attribute that holds the number
    of channels. A channel whose weight is zero becomes input-independent (dead).
    """

    params: tuple[str, ...] = ("weight", "bias")
    count_attr: str | None = None
    value_free = True

    def exact_on_probe(self, module: nn.Module) -> bool:
        """Whether ``module`` computes each element from that element and per-channel parameters alone, so that
        a probe of one element per channel gives a dead channel's constant (BatchNorm with running statistics:
        yes; statistics over the input: no, its dead channels' constants stay unknown)."""
        return False

    @property
    def shape_attrs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.count_attr,) if self.count_attr else ()

    def channel_dim(self, x: torch.Tensor) -> int:
        return 1 if x.ndim > 1 else 0

    def is_per_channel(self, module: nn.Module) -> bool:
        return True

    def propagate(self, call: Call) -> None:
        x, spec = call.value(0), call.spec(0)
        if not isinstance(x, torch.Tensor):
            call.pin_inputs()
            return
        d = self.channel_dim(x)
        if not self.is_per_channel(call.module):
            call.set_output(_unknown_values(call, _same_dim(spec, x, call.output)))
            return
        ids = call.slot("c", x.shape[d])
        if spec is None or spec.dim != d:
            call.pin(ids, f"{call.name}: its input's channels are not tracked")
            call.set_output(_unknown_values(call, _same_dim(spec, x, call.output)))
            return
        call.couple(ids, spec.ids)
        dead = self.dead_out(call.module, spec.dead)
        const = None
        if call.state.value_free and flags(dead).any() and self.exact_on_probe(call.module):
            const = self._constants(call, spec, x, dead)
        call.set_output(Spec(d, spec.ids, dead, only_dead(const, dead)))

    def _constants(self, call: Call, spec: Spec, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor | None:
        """The dead channels' constants. Where the weight is zero the output is the bias whatever the input (a
        pruned channel masked in its norm layer too: the common case, no probe); the others from a probe, in
        which live channels read 0 (their constants are dropped after)."""
        m = call.module
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.ndim == 1 and b.shape == w.shape:
            if not (flags(dead) & (values_of(w) != 0)).any():
                return torch.from_numpy(values_of(b))
        probe = Spec(spec.dim, spec.ids, spec.dead, torch.where(spec.dead, spec.known(), torch.zeros(len(spec))))
        return self._probe(call, probe, x)

    def _probe(self, call: Call, spec: Spec, x: torch.Tensor) -> torch.Tensor | None:
        shape = [1] * x.ndim
        shape[spec.dim] = len(spec)
        with torch.no_grad():
            out = call.module(spec.const.to(x.dtype).reshape(shape))
        return uniform_along(out, spec.dim)

    def dead_out(self, module: nn.Module, dead: torch.Tensor) -> torch.Tensor:
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim == 1 and w.numel() == dead.numel():
            return dead | (w.detach() == 0).cpu()
        return dead

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        index = keep.get("c")
        if index is None:
            return module
        for name in self.params:
            slice_param(module, name, index, 0)
        if self.count_attr:
            setattr(module, self.count_attr, int(index.numel()))
        return module


class ChannelMixRule(Rule):
    """Modules that read input channels along one dimension and write new channels (Conv, ConvTranspose, Linear).

    Subclasses give :meth:`usage` (which input channel each output channel reads, from the non-zero weights),
    :meth:`in_dim`/:meth:`out_dim` (the activations' channel dimensions) and :meth:`shrink`. An input channel can
    be dropped when no weight reads it, or when it is dead and zero, or dead and constant and :meth:`can_fold`.
    An output channel is dead when every input channel it reads is dead. Grouped modules keep their groups
    balanced: whole groups are dropped, and the kept groups lose the same number of channels each.
    """

    value_free = True

    def in_dim(self, module: nn.Module, x: torch.Tensor) -> int:
        return x.ndim - 1

    def out_dim(self, module: nn.Module, y: torch.Tensor) -> int:
        return y.ndim - 1

    def groups(self, module: nn.Module) -> int:
        return int(getattr(module, "groups", 1))

    def usage(self, module: nn.Module) -> torch.Tensor:
        """Bool ``[out_channels, in_channels]``: output channel o reads input channel i with a non-zero weight."""
        raise NotImplementedError

    def grouped_usage(self, module: nn.Module) -> tuple[torch.Tensor, int]:
        """``(local, groups)``: bool ``[out_channels, in_channels // groups]``, what each output channel reads
        of its group's inputs. Grouped modules override this (a full ``usage`` matrix of a depthwise
        convolution is channels squared); the default wraps :meth:`usage` as one group."""
        return self.usage(module), 1

    def can_fold(self, module: nn.Module, x: torch.Tensor) -> bool:
        return False

    def propagate(self, call: Call) -> None:
        module, x, spec, y = call.module, call.value(0), call.spec(0), call.output
        d = self.in_dim(module, x)
        if call.state.structure_only:  # the coupling only: no weight is read (usage is a pass over all of them)
            self._couple_only(call, x, d, y)
            return
        local, g_use = self.grouped_usage(module)
        local = local.cpu()
        n_out, ip = local.shape
        blocks = local.reshape(g_use, n_out // g_use, ip)  # [group, out in group, in in group]
        in_ids, out_ids = call.slot("in", x.shape[d]), call.slot("out", n_out)
        first_call = call.state.calls.get(call.name, 1) == 1
        # Per-channel flags in numpy (graph.flags), the [out, in] usage blocks in torch (vectorised byte max).
        if spec is not None and spec.dim == d:
            call.couple(in_ids, spec.ids)
            dead_in = spec.dead
            dead = flags(dead_in)
            unused = ~flags(any_along(blocks, 1)).reshape(-1)
            if first_call and self.can_fold(module, x):
                st = call.dead_stats(x, spec, d)
                zero = dead & flags(st.zero)
                foldable = dead & flags(st.uniform) & ~zero & ~unused
                call.sink(in_ids, unused | zero | foldable, fold=foldable, fold_values=st.value)
            else:  # only zero channels can go: one pass over them, not the statistics for folding
                call.sink(in_ids, unused | flags(call.zero_dead(x, spec, d)))
        else:
            call.pin(in_ids, f"{call.name}: its input channels are not tracked")
            dead_in = torch.full((len(in_ids),), call.is_const(0), dtype=torch.bool)
            dead = flags(dead_in)
        if not first_call:
            # A module called again (shared weights) cannot fold: the same bias would absorb two constants.
            for f in call.state.folds:
                if f.module == call.name:
                    call.state.block([in_ids[f.position]], f"{call.name} (called twice)")
        # An output channel is dead when every input it reads is dead: when it reads no live input.
        dead_out = reads_no_live(blocks, dead)
        const = None
        if call.state.value_free and flags(dead_out).any():
            const = self._constants(module, blocks, dead, spec if spec is not None and spec.dim == d else None,
                                    flags(dead_out))
        self._output(call, x, d, y, out_ids, dead_out, in_ids, first_call, const)

    def _constants(self, module: nn.Module, blocks: torch.Tensor, dead_in: np.ndarray, spec: Spec | None,
                   dead_out: np.ndarray) -> torch.Tensor | None:
        """A dead output channel's constant: the bias there when every dead input it reads is zero (zero
        inputs, zero padding: the bias everywhere); unknown when it reads a non-zero or unknown constant
        (padding makes the borders differ). Flags in numpy (see :func:`~nnic.channels.graph.flags`)."""
        bias = getattr(module, "bias", None)
        const = values_of(bias) if isinstance(bias, torch.Tensor) else np.zeros(len(dead_out))
        if spec is not None and spec.const is not None:
            bad = dead_in & (values_of(spec.const) != 0)  # NaN (unknown) counts as bad
        else:
            bad = dead_in
        if bad.any():
            reads_bad = ~flags(reads_no_live(blocks, ~bad))  # reads an input outside the good ones
            const = np.where(reads_bad, np.nan, const)
        return torch.from_numpy(np.where(dead_out, const, np.nan))

    def _couple_only(self, call: Call, x: torch.Tensor, d: int, y: torch.Tensor) -> None:
        """:meth:`propagate` of a structure-only propagation: the same ids, couplings, pins and constraints,
        no usage, sinks or dead channels."""
        spec = call.spec(0)
        in_ids, out_ids = call.slot("in", x.shape[d]), call.slot("out", y.shape[self.out_dim(call.module, y)])
        if spec is not None and spec.dim == d:
            call.couple(in_ids, spec.ids)
        else:
            call.pin(in_ids, f"{call.name}: its input channels are not tracked")
        self._output(call, x, d, y, out_ids, torch.zeros(len(out_ids), dtype=torch.bool), in_ids,
                     call.state.calls.get(call.name, 1) == 1)

    def _output(self, call: Call, x: torch.Tensor, d: int, y: torch.Tensor, out_ids: list[int],
                dead_out: torch.Tensor, in_ids: list[int], first_call: bool, const: torch.Tensor | None = None) -> None:
        spec, module = call.spec(0), call.module
        if spec is not None and spec.dim != d:
            call.pin(out_ids, f"{call.name}: its output channels would sit beside tracked ones")
            call.set_output(_unknown_values(call, _same_dim(spec, x, y)))  # along another dimension: values unknown
        else:
            call.set_output(Spec(self.out_dim(module, y), out_ids, dead_out, const))
        g = self.groups(module)
        if g > 1 and first_call:
            call.constraint(grouped_constraint(in_ids, out_ids, g, call.name))


def any_along(flags: torch.Tensor, dim: int) -> torch.Tensor:
    """``flags.any(dim)`` of a bool tensor, as the max of its bytes: torch's bool ``any`` is not vectorised, and
    over a usage matrix's rows (2048 x 512) it takes 3.4 ms where the max takes 0.04."""
    if flags.shape[dim] == 0:  # max has no value over nothing
        return flags.any(dim)
    return flags.view(torch.uint8).amax(dim).bool()


# The float dtypes numpy holds as they are (bfloat16 has no numpy type).
_NUMPY_FLOATS = frozenset((torch.float16, torch.float32, torch.float64))


def nonzero_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Bool ``[weight.shape[0], weight.shape[1]]`` on the CPU: whether any value of each kernel ``weight[o, i, ...]``
    is non-zero (NaN counts as non-zero, -0.0 as zero, as with ``!= 0``): the usage of a convolution, or of a
    linear layer (a 2-D weight's kernels are its values). In numpy: torch's ``!= 0`` on a float tensor runs at
    some 0.6 ns a value here (a ConvNeXt-tiny's linear layers, 26M values: 17 ms; numpy's, a tenth of that), and
    its ``any`` over the small last dimension of a kernel (a 3x3's 9 values) at 2 ns a value (17-20 ms of
    ResNet-50's speedup, its 512 x 512 x 3 x 3 weights 4 ms each), where numpy's ``!= 0`` and an or along the
    transposed bool matrix (so that the or runs along contiguous memory) take a fifth. Other devices and dtypes
    (bfloat16) take torch's."""
    w = weight.detach()
    if w.device.type != "cpu" or w.dtype not in _NUMPY_FLOATS or w.numel() == 0:
        return (w.flatten(2).any(2) if w.ndim > 2 else w != 0).cpu()
    rows, cols = w.shape[0], w.shape[1]
    nonzero = w.numpy().reshape(rows * cols, -1) != 0  # a copy first where the weight is not contiguous
    if nonzero.shape[1] == 1:
        return torch.from_numpy(nonzero.reshape(rows, cols))
    return torch.from_numpy(np.logical_or.reduce(np.ascontiguousarray(nonzero.T), axis=0).reshape(rows, cols))


# Up to this many usage flags, the and/any of :func:`reads_no_live` run in numpy: 2-5x faster than torch's on a
# grouped convolution's blocks and on layers of a few hundred channels (a RegNetX-400MF has some seventy), slower
# on the largest (a 2048 x 512 convolution, a 1000 x 1280 classifier), where torch's byte max runs along long rows.
_NUMPY_FLAGS_MAX = 1 << 19


def reads_no_live(blocks: torch.Tensor, dead: np.ndarray) -> torch.Tensor:
    """Per output channel of the usage ``blocks`` (bool ``[groups, out per group, in per group]``): whether it
    reads no input channel outside ``dead`` (bool flags, ``groups * in per group``), as a bool tensor."""
    g, _, ip = blocks.shape
    if blocks.numel() <= _NUMPY_FLAGS_MAX:
        usage = blocks.numpy()
        live = usage & ~dead.reshape(g, 1, ip) if dead.any() else usage
        return torch.from_numpy(~live.any(2).reshape(-1))
    live = blocks & ~torch.from_numpy(dead).reshape(g, 1, ip) if dead.any() else blocks
    return ~any_along(live, 2).reshape(-1)


def removed_flags(removed: Callable[[int], bool], ids: Sequence[int]) -> np.ndarray:
    """``removed(i)`` for each of ``ids`` as a bool array: one vectorised call where the caller offers one
    (speedup's decision gives ``removed.many``), else id by id."""
    many = getattr(removed, "many", None)
    if many is not None:
        return many(ids)
    return np.fromiter((removed(i) for i in ids), dtype=bool, count=len(ids))


def _keep_balanced(flags: np.ndarray, kept_blocks: np.ndarray) -> np.ndarray:
    """``flags`` ``[blocks, per block]`` (removed so far): in every kept block, the removed positions past the
    first ``k`` stay, ``k`` being the fewest any kept block removes (at most ``per - 1``)."""
    k = min(int(flags[kept_blocks].sum(1).min()), flags.shape[1] - 1)
    return flags & (np.cumsum(flags, axis=1) > k) & kept_blocks[:, None]


def grouped_constraint(in_ids: list[int], out_ids: list[int], groups: int, where: str = "a grouped module"):
    """Keep a grouped module's groups balanced; drop a group only when all its inputs and outputs go."""
    ins, outs = id_array(in_ids), id_array(out_ids)

    def keep(removed) -> list[int]:
        rin = removed_flags(removed, in_ids).reshape(groups, -1)
        rout = removed_flags(removed, out_ids).reshape(groups, -1)
        dropped = rin.all(1) & rout.all(1)
        if dropped.all():
            dropped[0] = False
        kept = ~dropped
        return np.concatenate([ins[_keep_balanced(rin, kept).reshape(-1)],
                               outs[_keep_balanced(rout, kept).reshape(-1)]]).tolist()

    keep.what = f"{where}'s {groups} groups must lose as many channels each"  # type: ignore[attr-defined]
    return keep


def block_usage(local: torch.Tensor, groups: int, n_in: int) -> torch.Tensor:
    """Full ``[out, in]`` usage from per-group ``[out, in // groups]`` usage."""
    if groups == 1:
        return local
    n_out, ip = local.shape[0], n_in // groups
    op = n_out // groups
    full = torch.zeros(n_out, n_in, dtype=torch.bool)
    for j in range(groups):
        full[j * op:(j + 1) * op, j * ip:(j + 1) * ip] = local[j * op:(j + 1) * op]
    return full
