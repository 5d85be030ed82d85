"""Observers: collect statistics of a tensor stream and choose its quantization range.

An observer is called on every tensor it should see (``observer(x)`` returns ``x``) and answers
:meth:`Observer.range` (the ``[lo, hi]`` it proposes, the *tracked* min/max of the calibration) and
:meth:`Observer.qparams` (scale and zero point under its :class:`~nnic.quantization.qparams.QuantSpec`).

=================  ===========================================================================================
name               range
=================  ===========================================================================================
``minmax``         the smallest and largest value seen
``moving_average`` exponential moving average of each batch's min and max (``averaging_constant``)
``percentile``     the ``percentile``-th percentile of ``|x|`` (symmetric) or of ``x`` at both ends (affine)
``mse``            the clipping range that minimises the mean squared quantization error
``kl``             the clipping threshold that minimises the KL divergence between the distribution and its
                   quantized version (TensorRT's entropy calibration)
=================  ===========================================================================================

Clipping observers (``percentile``, ``mse``, ``kl``) are exact on a tensor observed once (a weight: the
percentile is an exact order statistic, found by the Rust kernel ``kth_smallest_abs`` when the tensor is large)
and work on a histogram of everything seen when several tensors are observed (activations). Per-channel ranges
(``spec.per_channel``, along ``spec.axis``) are supported by every observer for a tensor observed once, and by
``minmax``/``moving_average`` for streams.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnic.quantization.qparams import QuantSpec, qparams_from_range

__all__ = ["OBSERVERS", "HistogramObserver", "KLObserver", "MSEObserver", "MinMaxObserver",
           "MovingAverageMinMaxObserver", "Observer", "PercentileObserver", "make_observer"]

_LARGE = 1 << 16  # above this many elements an exact order statistic goes to the Rust kernel


def _rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` as ``[channels, -1]`` (one row per tensor)."""
    x = x.detach().float()
    if not spec.per_channel:
        return x.reshape(1, -1)
    return x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)


def _out(v: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return v if spec.per_channel else v.reshape(())


class Observer(nn.Module):
    """Base: keeps the running min and max (per channel when ``spec.per_channel``)."""

    name = "observer"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.count = 0  # tensors observed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rows = _rows(x, self.spec)
            if rows.numel() == 0:
                return x
            if bool(torch.isnan(rows).any()):
                raise ValueError(f"{type(self).__name__}: the observed tensor contains NaN")
            self.update(rows)
            self.count += 1
        return x

    def update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.min_val.numel() == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    @property
    def observed(self) -> bool:
        return self.count > 0

    def _check(self) -> None:
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__} has observed nothing: run calibration data through the "
                               f"model first")

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(lo, hi)`` range to quantize (0-d, or one per channel)."""
        self._check()
        return _out(self.min_val, self.spec), _out(self.max_val, self.spec)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return qparams_from_range(*self.range(), self.spec)


class MinMaxObserver(Observer):
    """The smallest and largest value seen."""

    name = "minmax"


class MovingAverageMinMaxObserver(Observer):
    """EMA of each tensor's min and max: ``r += averaging_constant * (batch - r)`` (the first batch sets it)."""

    name = "moving_average"

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01) -> None:
        super().__init__(spec)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant: expected a float in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = averaging_constant

    def update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.min_val.numel() == 0:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


class HistogramObserver(Observer):
    """Base of the clipping observers: exact on a single tensor, histogram-based on a stream.

    The histogram is of ``|x|`` over ``[0, max|x|]`` (symmetric specs) or of ``x`` over ``[min, max]`` (affine),
    ``bins`` wide, re-binned when a later tensor widens the range.
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048) -> None:
        super().__init__(spec)
        self.bins = bins
        self._single: torch.Tensor | None = None  # the rows of the only tensor seen so far
        self.register_buffer("hist", torch.tensor([]))
        self._edges: tuple[float, float] = (0.0, 0.0)

    def update(self, rows: torch.Tensor) -> None:
        super().update(rows)
        if self.count == 0:
            self._single = rows.clone()
            return
        if self.spec.per_channel:
            raise ValueError(f"{type(self).__name__}: per-channel ranges of a stream (several tensors) are not "
                             f"supported; use 'minmax' or 'moving_average' for per-channel activations")
        if self._single is not None:
            self._add(self._single)
            self._single = None
        self._add(rows)

    def _add(self, rows: torch.Tensor) -> None:
        x = rows.flatten().abs() if self.spec.symmetric else rows.flatten()
        lo, hi = (0.0, float(x.max())) if self.spec.symmetric else (float(x.min()), float(x.max()))
        if self.hist.numel() == 0:
            self._edges = (lo, hi if hi > lo else lo + 1e-12)
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        old_lo, old_hi = self._edges
        new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
        if (new_lo, new_hi) != (old_lo, old_hi):  # re-bin the old counts by their bin centres
            centres = old_lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (old_hi - old_lo) / self.bins
            self.hist = self._histc(centres, self.hist, new_lo, new_hi)
            self._edges = (new_lo, new_hi)
        self.hist += self._histc(x.double(), None, *self._edges)

    def _histc(self, values: torch.Tensor, weights: torch.Tensor | None, lo: float, hi: float) -> torch.Tensor:
        index = ((values - lo) / (hi - lo) * self.bins).floor().clamp(0, self.bins - 1).long()
        out = torch.zeros(self.bins, dtype=torch.float64)
        return out.index_add_(0, index, weights if weights is not None else torch.ones_like(values))

    def _samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [C, N], weights [C, N])``: the exact tensor, or the histogram's bin centres and counts."""
        if self._single is not None:
            return self._single, torch.ones_like(self._single)
        lo, hi = self._edges
        centres = lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi - lo) / self.bins
        return centres.float()[None], self.hist.float()[None]

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check()
        lo, hi = self.clip_range()
        lo = torch.maximum(lo, self.min_val)  # never wider than what was seen
        hi = torch.minimum(hi, self.max_val)
        return _out(lo, self.spec), _out(hi, self.spec)

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile of ``|x|`` (symmetric) or at both tails of ``x`` (affine)."""

    name = "percentile"

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(spec, bins)
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile: expected a float in (0, 100], got {percentile!r}")
        self.percentile = percentile

    def _rank(self, n: int, fraction: float) -> int:
        return min(max(math.ceil(fraction * n), 1), n)

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100
        if self._single is not None:
            rows = self._single
            n = rows.shape[1]
            if self.spec.symmetric:
                t = torch.stack([_kth_abs(row, self._rank(n, p)) for row in rows])
                return -t, t
            lo = torch.stack([row.kthvalue(self._rank(n, 1 - p)).values for row in rows])
            hi = torch.stack([row.kthvalue(self._rank(n, p)).values for row in rows])
            return lo, hi
        lo_edge, hi_edge = self._edges
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        width = (hi_edge - lo_edge) / self.bins

        def edge(q: float) -> torch.Tensor:
            index = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
            return torch.tensor([lo_edge + (index + 1) * width], dtype=torch.float32)

        if self.spec.symmetric:
            t = edge(p)
            return -t, t
        return edge(1 - p), edge(p)


def _kth_abs(row: torch.Tensor, k: int) -> torch.Tensor:
    if row.numel() >= _LARGE:
        from nnic import kernels

        return torch.tensor(float(kernels.kth_smallest_abs(row, k)))
    return row.abs().kthvalue(k).values


def _candidate_errors(values: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      spec: QuantSpec) -> torch.Tensor:
    """Weighted squared quantization error of each row of ``values`` for each candidate range ``[C, K]``."""
    one = QuantSpec(spec.bits, spec.signed, spec.symmetric)
    scale, zero = qparams_from_range(lo, hi, one)  # [C, K]
    errors = []
    for k in range(lo.shape[1]):
        s, z = scale[:, k:k + 1], zero[:, k:k + 1].float()
        q = torch.clamp(torch.round(values / s) + z, one.qmin, one.qmax)
        errors.append(((values - (q - z) * s) ** 2 * weights).sum(dim=1))
    return torch.stack(errors, dim=1)


class MSEObserver(HistogramObserver):
    """The range ``alpha * [min, max]`` (``alpha`` on a grid of ``steps`` values in (0, 1]) with the least MSE."""

    name = "mse"

    def __init__(self, spec: QuantSpec, steps: int = 100, bins: int = 2048) -> None:
        super().__init__(spec, bins)
        self.steps = steps

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, weights = self._samples()
        if self._single is None and self.spec.symmetric:  # the histogram is of |x|: mirror it
            values, weights = torch.cat([-values, values], 1), torch.cat([weights, weights], 1) / 2
        lo = self.min_val.reshape(-1, 1).float()
        hi = self.max_val.reshape(-1, 1).float()
        if self.spec.symmetric:
            amax = torch.maximum(-lo, hi)
            lo, hi = -amax, amax
        alphas = torch.arange(1, self.steps + 1, dtype=torch.float32) / self.steps
        errors = _candidate_errors(values, weights, lo * alphas, hi * alphas, self.spec)
        best = alphas[errors.argmin(dim=1)]
        return lo[:, 0] * best, hi[:, 0] * best


class KLObserver(HistogramObserver):
    """Entropy calibration: the threshold on ``|x|`` whose quantized distribution is closest in KL divergence.

    ``candidates`` thresholds are tried between the quantization level count and the histogram's end.
    Affine specs clip ``[min, max]`` to ``[-t, t]``.

    The first bin (values near 0: after a ReLU, often half of all values) is counted like its neighbour, as
    NVIDIA's entropy calibrator does: zeros are exact at any threshold, and left as they are their mass
    makes the tail look negligible, so an 8-bit post-ReLU activation was clipped below its 99.9th percentile
    (about 50x minmax's squared error). Ties go to the widest threshold.
    """

    name = "kl"

    def __init__(self, spec: QuantSpec, bins: int = 2048, candidates: int = 128) -> None:
        super().__init__(spec, bins)
        self.candidates = candidates

    def _threshold(self, hist: torch.Tensor, top: float, unsigned: bool) -> float:
        """The threshold on |x| (``top`` is the histogram's end) with the least KL divergence."""
        import numpy as np

        levels = 1 << (self.spec.bits - 1 + int(unsigned))
        hist = hist.double().cpu().numpy().copy()
        n = hist.size
        if n > 1:
            hist[0] = hist[1]
        first = max(levels, n // 16)  # thresholds below 1/16 of the range are never right (TensorRT: 128/2048)
        if n <= first:
            return top
        stride = max(1, (n - first) // self.candidates)
        best, best_kl = n, math.inf
        for i in range(first, n + 1, stride):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            chunk = np.arange(i) * levels // i
            nonzero = hist[:i] > 0
            sums = np.bincount(chunk, weights=hist[:i], minlength=levels)
            counts = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=levels)
            q = np.where(nonzero, (sums / np.maximum(counts, 1))[chunk], 0.0)
            if p.sum() == 0 or q.sum() == 0:
                continue
            p, q = p / p.sum(), q / q.sum()
            support = p > 0
            kl = float((p[support] * np.log(p[support] / np.maximum(q[support], 1e-12))).sum())
            if kl <= best_kl:
                best, best_kl = i, kl
        return top * best / n

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._single is not None:
            thresholds = []
            bins = min(self.bins, max(128, self._single.shape[1]))
            for row in self._single:
                a = row.abs().double()
                top = float(a.max())
                hist = torch.histc(a, bins=bins, min=0, max=top) if top > 0 else torch.zeros(bins)
                thresholds.append(self._threshold(hist, top, bool(row.min() >= 0)) if top > 0 else 0.0)
            t = torch.tensor(thresholds, dtype=torch.float32)
        else:
            lo_edge, hi_edge = self._edges
            unsigned = lo_edge >= 0 or float(self.min_val.min()) >= 0
            if self.spec.symmetric:
                hist, top = self.hist, hi_edge
            else:  # fold the signed histogram onto |x|
                top = max(abs(lo_edge), abs(hi_edge))
                centres = lo_edge + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi_edge - lo_edge) / self.bins
                index = (centres.abs() / top * self.bins).floor().clamp(0, self.bins - 1).long()
                hist = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, index, self.hist)
            t = torch.tensor([self._threshold(hist, top, unsigned)], dtype=torch.float32)
        return -t, t


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls for cls in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver,
                              KLObserver)
}
OBSERVERS["histogram"] = PercentileObserver  # the histogram observer's default range choice is the percentile


def make_observer(name: str, spec: QuantSpec, **options: float) -> Observer:
    """An observer by name (see the module docstring), with its options (``percentile=99.9``...)."""
    if name not in OBSERVERS:
        raise ValueError(f"observer: expected one of {', '.join(map(repr, OBSERVERS))}, got {name!r}")
    cls = OBSERVERS[name]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "spec"}
    return cls(spec, **{k: v for k, v in options.items() if k in accepted})
