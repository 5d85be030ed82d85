"""Channel labels, coupled groups and the :class:`Call` object that speedup rules work with.

Every tensor of the traced graph may carry a :class:`Spec`: the dimension that holds channels and, for each
index along it, a *channel id*. Ids are union-find elements: two ids that must be removed together (the two
operands of a residual ``add``, a conv's output and its BatchNorm) are united into one group. A group of ids is
removed only if nothing *pins* it (a model output, an op without a rule) and every *sink* that consumes it
(a conv or linear reading it as input) says that removing it leaves its result unchanged.

Each index also carries a ``dead`` flag: its value does not depend on the model's input (a channel whose weights
are all zero, then a BatchNorm, then a ReLU...). A sink may drop an input channel that is dead and exactly zero,
or dead and constant when it can fold the constant into its bias, or one that its weights never read.

Whether a dead channel is zero (or which constant it holds) is read off the masked model's activations, or, in a
*value-free* propagation (:attr:`State.value_free`), off :attr:`Spec.const`: the constant each dead channel holds
for every input, derived by the rules from the masks and parameters alone. A question that the constants cannot
answer raises :class:`NeedsValues`, and the caller runs the propagation on real values instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn


@dataclass(frozen=True)
class UnionRecord:
    """A union-find's unions and their result, kept so that another propagation asking for exactly the same
    unions over as many ids adopts the result instead of computing it again (the groups are a function of
    the pairs and the id count alone)."""

    size: int
    pairs: list[tuple[list[int], list[int]]]
    parent: np.ndarray  # int64, read-only
    roots: np.ndarray


# The ids' int objects, shared by every slot made since the process started (up to _IDS_MAX ids, some 10 MB):
# a slot's list is then a slice of this one, pointers copied, where ``range`` made a new int object for each id
# beyond 256, 40 ns apiece; the pruner's analysis and speedup's make the same ids, some 80 000 each on a
# torchvision classifier (3-4 ms of the two). Ids are compared by value, so sharing them changes nothing else.
_IDS: list[int] = []
_IDS_MAX = 1 << 18


class IdRange(list):
    """Consecutive channel ids ``start, start + 1, ...`` as :meth:`UnionFind.new` gives them (a slot's ids): a
    list that knows its start, so that reading its roots is a slice (:meth:`State.roots_of`) instead of a check
    of every id. Slots are shared by every call of a module: changing one in place would change them all, so it
    refuses (``list(ids)`` is a copy to change)."""

    __slots__ = ("start",)

    def __init__(self, start: int, n: int) -> None:
        end = start + n
        if end > len(_IDS) and len(_IDS) < _IDS_MAX:
            _IDS.extend(range(len(_IDS), min(max(end, 2 * len(_IDS)), _IDS_MAX)))
        super().__init__(_IDS[start:end] if end <= len(_IDS) else range(start, end))
        self.start = start

    def __reduce__(self) -> tuple:
        return IdRange, (self.start, len(self))

    def __eq__(self, other: object) -> bool:
        """Two slots' ids are equal when they start at the same id and are as many (without comparing every
        id: a union-find adopting another's record compares some 60 000 of them, 1 ms); a plain list as a list."""
        if type(other) is IdRange:
            return self.start == other.start and len(self) == len(other)
        return list.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a slot's ids are shared by every call of its module: copy them (list(ids)) to change them")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]
    append = extend = insert = pop = remove = reverse = sort = clear = _refuse  # type: ignore[assignment]


class UnionFind:
    """Channel ids 0, 1, 2...; every root is its group's smallest id.

    Unions are recorded as they are asked for and applied when a root is first read: propagation only writes
    unions, and speedup and pruning read the groups once it is done, so a propagation whose unions match a
    recorded one (:meth:`adopt`) never runs them. They are applied all at once, vectorised (:meth:`_flush`):
    every parent entry ends up pointing at its root."""

    def __init__(self) -> None:
        # int64; ids from len(_parent) to size are their own parents (new() is lazy)
        self._parent: np.ndarray = np.zeros(0, dtype=np.int64)
        self._size = 0
        self.pairs: list[tuple[list[int], list[int]]] = []  # every union asked for, in order
        self._applied = 0  # pairs[:_applied] are in _parent
        self._roots: np.ndarray | None = None  # every id's root, until the next change

    @property
    def size(self) -> int:
        return self._size

    @property
    def parent(self) -> np.ndarray:
        """Every id's parent (after the flush, its root); int64."""
        self._flush()
        return self._parent

    def new(self, n: int) -> list[int]:
        """``n`` fresh ids, each its own group. Their parent entries are written when the unions are applied:
        a slot's ids are asked for on every propagation, and most are never united."""
        start = self._size
        self._size += n
        self._roots = None
        return IdRange(start, n)

    def find(self, i: int) -> int:
        return int(self.parent[i])  # the flush leaves every entry pointing at its root

    def union_pairs(self, a: Iterable[int], b: Iterable[int]) -> None:
        """Unite ``a[k]`` with ``b[k]`` for each k (propagation couples whole channel lists at a time: a ResNet-50
        couples some 160 000 pairs, and a call per pair and per find was most of its analysis). A slot's ids
        (:class:`IdRange`, which refuses changes) are kept as they are, other sequences copied."""
        a = a if type(a) is IdRange else list(a)
        b = b if type(b) is IdRange else list(b)
        n = min(len(a), len(b))
        self.pairs.append((a[:n], b[:n]) if n < max(len(a), len(b)) else (a, b))
        self._roots = None

    def _flush(self) -> None:
        """Apply the pending unions, all at once: each pass reads both ends' roots, hangs every larger root
        under the smallest root it is paired with (``minimum.at``), and jumps pointers until each entry points
        at its root (a parent is never larger than its child); passes repeat until every pair shares a root.
        The roots are the groups' smallest ids, as uniting pair by pair makes them. A Python loop over the
        pairs (a RegNetX-400MF couples some 44 000, a ResNet-50 66 000) took 8-15 ms; this takes a few."""
        pending = self.pairs[self._applied:]
        if not pending and len(self._parent) == self._size:
            return
        parent = self._parent
        if len(parent) < self._size:
            parent = np.concatenate([parent, np.arange(len(parent), self._size, dtype=np.int64)])
        if pending:
            a = np.concatenate([id_array(x) for x, _ in pending])
            b = np.concatenate([id_array(y) for _, y in pending])
            while True:
                while True:  # every entry to its root
                    up = parent[parent]
                    if np.array_equal(up, parent):
                        break
                    parent = up
                ra, rb = parent[a], parent[b]
                apart = ra != rb
                if not apart.any():
                    break
                ra, rb = ra[apart], rb[apart]
                np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        self._parent = parent
        self._applied = len(self.pairs)

    def root_array(self) -> np.ndarray:
        """``find(i)`` of every id as an int64 array (read-only), kept until the next union: speedup's decision,
        shrinking and report all read it."""
        if self._roots is None:
            r = self.parent.copy()  # already the roots (see _flush)
            r.setflags(write=False)
            self._roots = r
        return self._roots

    def roots(self) -> list[int]:
        """``find(i)`` of every id, as a list."""
        return self.root_array().tolist()

    def record(self) -> UnionRecord:
        """The unions so far and their result (copies: this union-find may go on uniting)."""
        roots = self.root_array()
        return UnionRecord(self.size, list(self.pairs), roots, roots)

    def adopt(self, record: UnionRecord) -> bool:
        """Take ``record``'s result if it was computed from exactly these unions over as many ids (then nothing
        is applied here); returns whether it was."""
        if record.size != self.size or len(record.pairs) != len(self.pairs) or record.pairs != self.pairs:
            return False
        self._parent, self._applied, self._roots = record.parent.copy(), len(self.pairs), record.roots
        self._size = record.size
        return True


def id_array(ids: Sequence[int]) -> np.ndarray:
    """``ids`` as an int64 array: a slot's consecutive ids (:class:`IdRange`, most of what propagation couples,
    sinks and constrains) made by ``arange``, anything else converted int by int (which was a third of the
    union-find's flush)."""
    if type(ids) is IdRange:
        return np.arange(ids.start, ids.start + len(ids), dtype=np.int64)
    return np.asarray(ids, dtype=np.int64)


class NeedsValues(Exception):
    """A value-free propagation met a question only the activations answer (a dead channel of unknown value read
    by a sink, a rule without a value-free form): the caller propagates on the masked model's values instead."""


@dataclass
class Spec:
    """The channel labelling of one tensor: ``ids[k]`` is the channel id at index ``k`` of dimension ``dim``.

    ``const`` (value-free propagation only): float64, one per index, the value a dead channel holds at every
    position for every input, NaN where it is not known (or the channel is live); ``None``: none known."""

    dim: int
    ids: list[int]
    dead: torch.Tensor  # bool, one per index: the value there does not depend on the model's input
    const: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != int(self.dead.numel()):
            raise ValueError(f"Spec: {len(self.ids)} ids but {int(self.dead.numel())} dead flags")
        if self.const is not None and int(self.const.numel()) != len(self.ids):
            raise ValueError(f"Spec: {len(self.ids)} ids but {int(self.const.numel())} constants")

    def take(self, positions: Sequence[int], dim: int | None = None) -> Spec:
        """The spec of a tensor made of these positions (in order), along ``dim`` (default: the same)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        pick = (lambda t: t[index] if len(positions) else t[:0])
        return Spec(self.dim if dim is None else dim, [self.ids[p] for p in positions], pick(self.dead),
                    None if self.const is None else pick(self.const))

    def with_const(self, const: torch.Tensor | None, dim: int | None = None) -> Spec:
        """The same channels (along ``dim``, default the same) holding other constants."""
        return Spec(self.dim if dim is None else dim, self.ids, self.dead, const)

    def known(self) -> torch.Tensor:
        """The constants, NaN where unknown (all NaN when ``const`` is ``None``)."""
        if self.const is None:
            return torch.full((len(self.ids),), float("nan"), dtype=torch.float64)
        return self.const

    def zero_only(self) -> Spec:
        """The spec of a tensor that averages, pads or resamples this one along other dimensions: a zero
        channel stays exactly zero, another constant may not (a float mean of equal values need not equal
        them; zero padding breaks uniformity)."""
        if self.const is None:
            return self
        c = self.const
        return self.with_const(torch.where(c == 0, c, torch.full_like(c, float("nan"))))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ChannelStats:
    """Per index along a dimension of a real tensor: all zero, all equal, and the first value."""

    zero: torch.Tensor
    uniform: torch.Tensor
    value: torch.Tensor


def _asked(value: torch.Tensor, dim: int, where: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor, Any] | None:
    """What a per-channel reduction reads: ``(tensor, the dimensions to reduce, the asked channels' positions,
    which rows of the reduction are theirs)``, or ``None`` when no channel is asked about. The reductions run
    on the tensor in place over its other dimensions: gathering the asked channels first copies them (and a
    channels-last tensor once more to lay them out), which costs more than reducing them all unless few are
    asked about (rules ask about the dead channels of large activations: half of them after pruning)."""
    n = value.shape[dim]
    v = value.detach()
    if v.dtype == torch.bool:
        v = v.to(torch.uint8)
    index = torch.arange(n) if where is None else where.cpu().nonzero().flatten()
    if index.numel() == 0:
        return None
    gathered = 4 * index.numel() < n  # a few channels: gather them; else reduce all and keep what was asked
    if gathered:
        v = v.index_select(dim, index.to(v.device))
    return v, tuple(d for d in range(v.ndim) if d != dim), index, slice(None) if gathered else index


def channel_stats(value: torch.Tensor, dim: int, where: torch.Tensor | None = None) -> ChannelStats:
    """Stats of each index along ``dim``; with ``where`` (bool, one per index) only of those indices, the others
    read as neither zero nor uniform. Computed in the tensor's own dtype (min and max are exact in any)."""
    n = value.shape[dim]
    zero = torch.zeros(n, dtype=torch.bool)
    uniform = torch.zeros(n, dtype=torch.bool)
    first = torch.zeros(n, dtype=torch.float64)
    asked = _asked(value, dim, where)
    if asked is None:
        return ChannelStats(zero, uniform, first)
    v, other, index, rows = asked
    if v.numel() == 0:
        zero[index], uniform[index] = True, True
        return ChannelStats(zero, uniform, first)
    hi, lo = (v.amax(dim=other), v.amin(dim=other)) if other else (v, v)
    finite = torch.isfinite(hi) & torch.isfinite(lo)  # a NaN anywhere in a channel makes its max NaN
    zero[index] = ((hi == 0) & (lo == 0) & finite).cpu()[rows]
    uniform[index] = ((hi == lo) & finite).cpu()[rows]
    first[index] = v.movedim(dim, -1)[(0,) * (v.ndim - 1)].double().cpu()[rows]  # each channel's first value
    return ChannelStats(zero, uniform, first)


def channel_zero(value: torch.Tensor, dim: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """``channel_stats(value, dim, where).zero`` without the uniformity and first values: what a sink that
    cannot fold constants asks. Max and min (NaN and infinity read as non-zero), not ``any``: torch's ``any``
    over the large dimensions of an activation takes several times as long as both."""
    zero = torch.zeros(value.shape[dim], dtype=torch.bool)
    asked = _asked(value, dim, where)
    if asked is None:
        return zero
    v, other, index, rows = asked
    if v.numel() == 0:
        zero[index] = True
        return zero
    hi, lo = (v.amax(dim=other), v.amin(dim=other)) if other else (v, v)
    zero[index] = ((hi == 0) & (lo == 0)).cpu()[rows]
    return zero


@dataclass
class Fold:
    """A constant input channel that a sink folds into its bias if the channel is removed."""

    module: str
    slot: str
    position: int
    value: float


@dataclass
class State:
    """Everything propagation learns, for the decision and the shrinking that follow."""

    uf: UnionFind = field(default_factory=UnionFind)
    pinned: dict[int, str] = field(default_factory=dict)  # raw id -> why
    # Which sink cannot drop which raw ids: (ids, sink) runs in the order the sinks said so (see block()).
    blocked_runs: list[tuple[np.ndarray, str]] = field(default_factory=list)
    slots: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    slot_rules: dict[str, Any] = field(default_factory=dict)  # module name -> rule
    folds: list[Fold] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # module name -> number of calls
    constraints: list[Callable[[Callable[[int], bool]], Iterable[int]]] = field(default_factory=list)
    params: list[tuple[str, int, list[int]]] = field(default_factory=list)  # (attr path, dim, ids)
    const: set[fx.Node] = field(default_factory=set)
    specs: dict[fx.Node, Any] = field(default_factory=dict)
    values: dict[fx.Node, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Only the coupling is wanted (dependency-aware pruning on the dense model): sinks are not recorded and
    # channel statistics read as "neither zero nor uniform", so rules skip the work that only speedup reads.
    structure_only: bool = False
    # Speedup without the masked forward: values are the trace's (shapes only), and whether a dead channel is
    # zero comes from Spec.const; what the constants cannot answer raises NeedsValues.
    value_free: bool = False

    def pin(self, ids: Iterable[int], why: str) -> None:
        for i in ids:
            self.pinned.setdefault(i, why)

    def block(self, ids: Sequence[int] | np.ndarray, where: str) -> None:
        """Sink ``where`` cannot drop these raw ids (the first sink to say so is the one reported). Kept as
        runs, not id by id: sinks block thousands of channels of a dense model, and the decision reads
        them once, vectorised."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self.blocked_runs.append((ids, where))

    def roots_of(self, ids: Sequence[int]) -> np.ndarray:
        """The roots of ``ids`` (an int64 array): a slice of :meth:`UnionFind.root_array` for the consecutive
        ids a slot holds, a gather otherwise."""
        roots = self.uf.root_array()
        if type(ids) is IdRange:
            return roots[ids.start:ids.start + len(ids)]
        if ids and ids[-1] - ids[0] == len(ids) - 1 and ids == list(range(ids[0], ids[-1] + 1)):
            return roots[ids[0]:ids[-1] + 1]
        return roots[np.asarray(ids, dtype=np.int64)] if ids else roots[:0]


def flags(t: torch.Tensor | np.ndarray | Sequence[bool]) -> np.ndarray:
    """Per-channel flags as a numpy bool array (a view of a CPU bool tensor's memory, no copy). The rules'
    flag arithmetic runs on a few hundred values a call, where a torch op costs 3-15 us and numpy's 1-3: the
    value-free propagation does some thirty such ops per channel-mixing layer."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.numpy() if t.dtype == torch.bool else t.numpy().astype(bool)
    return np.asarray(t, dtype=bool)


def values_of(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a float64 numpy array (one conversion in torch: numpy has no bfloat16)."""
    return t.detach().double().cpu().numpy()


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [x for item in obj for x in _flatten(item)]
    if isinstance(obj, dict):
        return [x for item in obj.values() for x in _flatten(item)]
    return [obj]


class Call:
    """One call of a module, function or method during propagation; what a rule's ``propagate`` receives.

    Attributes: ``node`` (the fx node), ``module`` and ``name`` (for a module call, else ``None``), ``args`` and
    ``kwargs`` (the real values the masked model computed, nodes replaced by their values) and ``output``
    (the real output). Inputs are inspected with :meth:`spec`, outputs declared with :meth:`set_output`.
    """

    def __init__(self, state: State, node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict,
                 output: Any) -> None:
        self.state, self.node, self.module = state, node, module
        self.name = node.target if node.op == "call_module" else None
        self.args, self.kwargs, self.output = args, kwargs, output
        self._output_spec: Any = None

    # ---- inputs
    def spec(self, index: int | str = 0) -> Spec | None:
        """The spec of positional argument ``index`` (or keyword argument named so), ``None`` if unlabelled."""
        arg = self._arg_node(index)
        spec = self.state.specs.get(arg) if isinstance(arg, fx.Node) else None
        return spec if isinstance(spec, Spec) else None

    def spec_tree(self, index: int | str = 0) -> Any:
        """The spec structure of an argument that is a tuple/list/dict of tensors (or a tensor)."""
        arg = self._arg_node(index)
        return self.state.specs.get(arg) if isinstance(arg, fx.Node) else None

    def _arg_node(self, index: int | str) -> Any:
        if isinstance(index, str):
            return self.node.kwargs.get(index)
        return self.node.args[index] if index < len(self.node.args) else None

    def value(self, index: int | str = 0) -> Any:
        if isinstance(index, str):
            return self.kwargs.get(index)
        return self.args[index] if index < len(self.args) else None

    def input_specs(self) -> list[Spec]:
        """Every labelled tensor among the arguments (nested containers included)."""
        nodes = _flatten(list(self.node.args) + list(self.node.kwargs.values()))
        out = []
        for n in nodes:
            spec = self.state.specs.get(n) if isinstance(n, fx.Node) else None
            out += [s for s in _flatten(spec) if isinstance(s, Spec)]
        return out

    def is_const(self, index: int | str = 0) -> bool:
        """Whether argument ``index`` does not depend on the model's input (a literal, a parameter...)."""
        arg = self._arg_node(index)
        return not isinstance(arg, fx.Node) or arg in self.state.const

    # ---- channel ids
    def slot(self, name: str, size: int) -> list[int]:
        """The ids of this module's channel slot ``name`` ("in", "out"...), the same for every call."""
        if self.name is None:
            raise RuntimeError("slot() is for module rules")
        key = (self.name, name)
        ids = self.state.slots.get(key)
        if ids is None:
            ids = self.state.slots[key] = self.state.uf.new(size)
        elif len(ids) != size:
            self.pin(ids, f"{self.name} is called with {size} and {len(ids)} channels in slot {name!r}")
            return self.state.uf.new(size)
        return ids

    def new_ids(self, n: int) -> list[int]:
        return self.state.uf.new(n)

    def couple(self, a: Sequence[int], b: Sequence[int]) -> None:
        """Unite ids pairwise: index k of ``a`` and of ``b`` are removed together or not at all."""
        if len(a) != len(b):
            raise ValueError(f"couple: {len(a)} and {len(b)} ids")
        if a is not b:
            self.state.uf.union_pairs(a, b)

    def pin(self, ids: Iterable[int] | Spec | None, why: str | None = None) -> None:
        """Keep these channels whatever the masks say."""
        if ids is None:
            return
        if isinstance(ids, Spec):
            ids = ids.ids
        self.state.pin(ids, why or f"node {self.node.name} ({_describe(self.node)})")

    def pin_inputs(self, why: str | None = None) -> None:
        for spec in self.input_specs():
            self.pin(spec, why)

    def sink(self, ids: Sequence[int], removable: torch.Tensor, slot: str = "in",
             fold: torch.Tensor | None = None, fold_values: torch.Tensor | None = None) -> None:
        """This module consumes channels ``ids``; ``removable[k]`` says whether dropping index k keeps its
        result exact. Where ``fold[k]``, dropping needs ``fold_values[k]`` folded into the bias (see
        :meth:`~nnic.speedup.rules.Rule.fold`)."""
        if self.state.structure_only:
            return
        where = f"{self.name or self.node.name}"
        removable = flags(removable)  # numpy: a tenth of torch's cost on a few hundred flags
        kept = np.flatnonzero(~removable)
        if kept.size:
            self.state.block(id_array(ids)[kept], where)
        if fold is not None:
            positions = np.flatnonzero(flags(fold) & removable)
            if positions.size:
                values = values_of(torch.as_tensor(fold_values))[positions]
                self.state.folds += [Fold(self.name, slot, k, v) for k, v in zip(positions.tolist(), values.tolist())]

    def constraint(self, fn: Callable[[Callable[[int], bool]], Iterable[int]]) -> None:
        """Add ``fn(removed) -> ids to keep``: ``removed(id)`` tells whether an id is to be removed so far."""
        self.state.constraints.append(fn)

    def param_member(self, path: str, dim: int, ids: Sequence[int]) -> None:
        """A parameter or buffer (``get_attr`` target ``path``) indexed by these ids along ``dim``."""
        self.state.params.append((path, dim, list(ids)))

    # ---- outputs
    def set_output(self, spec: Any) -> None:
        """Declare the output's spec (a :class:`Spec`, ``None``, or a tuple/list/dict of them for tuple outputs)."""
        self._output_spec = spec

    def stats(self, value: torch.Tensor, dim: int, where: torch.Tensor | None = None) -> ChannelStats:
        """Per channel along ``dim``: all zero, all equal, first value (only at ``where``, if given). A
        structure-only propagation reads every channel as neither zero nor uniform, without looking. A
        value-free one has no values to read (:meth:`dead_stats` answers from the constants)."""
        if self.state.structure_only:
            return channel_stats(value, dim, torch.zeros(value.shape[dim], dtype=torch.bool))
        if self.state.value_free:
            raise NeedsValues(f"{self.name or self.node.name}: asks for channel statistics of values")
        return channel_stats(value, dim, where)

    def dead_stats(self, value: torch.Tensor, spec: Spec, dim: int | None = None) -> ChannelStats:
        """:meth:`stats` of ``spec``'s dead channels in ``value`` along ``dim`` (``spec.dim`` by default); in a
        value-free propagation, from the constants (every dead channel's must be known)."""
        d = spec.dim if dim is None else dim
        if not self.state.value_free or self.state.structure_only:
            return self.stats(value, d, spec.dead)
        c, dead = self._dead_constants(spec), flags(spec.dead)
        return ChannelStats(torch.from_numpy(dead & (c == 0)), torch.from_numpy(dead.copy()),
                            torch.from_numpy(np.where(dead, c, 0.0)))

    def zero_dead(self, value: torch.Tensor, spec: Spec, dim: int | None = None) -> torch.Tensor:
        """Per channel of ``spec``: dead, and all zero in ``value`` along ``dim`` (``spec.dim`` by default), which
        is what lets a layer reading ``value`` drop that input channel."""
        d = spec.dim if dim is None else dim
        if self.state.structure_only:
            return torch.zeros(len(spec.ids), dtype=torch.bool)
        if self.state.value_free:
            return torch.from_numpy(flags(spec.dead) & (self._dead_constants(spec) == 0))
        return spec.dead & channel_zero(value, d, spec.dead)

    def _dead_constants(self, spec: Spec) -> np.ndarray:
        """``spec``'s constants (float64 numpy), every dead channel's known, else :class:`NeedsValues`."""
        c = np.full(len(spec), np.nan) if spec.const is None else values_of(spec.const)
        if (np.isnan(c) & flags(spec.dead)).any():
            raise NeedsValues(f"{self.name or self.node.name} ({_describe(self.node)}) reads dead channels whose "
                              f"value the masks alone do not give")
        return c


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    target = node.target
    return f"function {getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', target)}".lstrip(".")


def describe(node: fx.Node) -> str:
    """``"module 'layer1.0.conv1'"``, ``"function torch.cat"``, ``"method Tensor.view"``."""
    return _describe(node)
