"""Hypothesis strategies for :mod:`nnic.kernels` inputs. Needs ``hypothesis`` (``pip install nnic[test]``)."""

from __future__ import annotations

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("nnic.testing.strategies needs hypothesis: pip install 'nnic[test]'") from exc

import numpy as np

__all__ = ["float32_arrays", "shapes", "tie_arrays", "weight_arrays", "with_axis", "with_k"]


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 9) -> st.SearchStrategy:
    """Array shapes (0-d to ``max_dims``-d, sides may be 0)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def float32_arrays(shape=None, *, allow_infinity: bool = True, allow_nan: bool = False,
                   min_side: int = 0) -> st.SearchStrategy[np.ndarray]:
    """float32 arrays with any finite values (subnormals, ±0.0 included), optionally ±inf / NaN."""
    elements = st.floats(width=32, allow_nan=allow_nan, allow_infinity=allow_infinity)
    return hnp.arrays(np.float32, shape if shape is not None else shapes(min_side=min_side), elements=elements)


def tie_arrays(shape=None, *, levels: int = 4, min_side: int = 0) -> st.SearchStrategy[np.ndarray]:
    """float32 arrays of small integer values of both signs (many ties, ±0.0)."""
    values = [float(v) for v in range(-levels, levels + 1)] + [-0.0]
    return hnp.arrays(np.float32, shape if shape is not None else shapes(min_side=min_side),
                      elements=st.sampled_from(values))


def weight_arrays(shape=None, *, min_side: int = 0) -> st.SearchStrategy[np.ndarray]:
    """A mix of general float32 arrays and tie-heavy ones."""
    return st.one_of(float32_arrays(shape, min_side=min_side), tie_arrays(shape, min_side=min_side))


@st.composite
def with_k(draw, arrays: st.SearchStrategy[np.ndarray], *, min_k: int = 1):
    """``(x, k)`` with ``k`` in ``[min_k, x.size]`` (the edges are drawn often)."""
    x = draw(arrays.filter(lambda a: a.size >= min_k))
    k = draw(st.one_of(st.just(min_k), st.just(x.size), st.integers(min_k, x.size)))
    return x, k


@st.composite
def with_axis(draw, arrays: st.SearchStrategy[np.ndarray]):
    """``(x, axis)`` with axis None or a valid (possibly negative) axis of x."""
    x = draw(arrays)
    if x.ndim == 0:
        return x, None
    return x, draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
