"""torch <-> numpy adaptation and argument checks shared by every kernel of :mod:`nnic.kernels`.

The native module takes C-contiguous numpy arrays of exactly one dtype and writes into caller-provided
outputs; these helpers turn what users pass (torch tensors on any device, numpy arrays, views, Python
scalars) into that, and raise ``TypeError``/``ValueError`` naming the argument when it cannot be done. One
place per rule, so that the selection, quantization and GEMM kernels check alike.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

Array = Union[torch.Tensor, np.ndarray]


def is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def on_device(x: Any) -> bool:
    """True for torch tensors that are not on the CPU: those run the torch twins (:mod:`.twins`)."""
    return is_torch(x) and x.device.type != "cpu"


def dtype_name(x: Array) -> str:
    return str(x.dtype).removeprefix("torch.")


def check_array(x: Any, name: str) -> None:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_dtype(x: Any, name: str, allowed: tuple[str, ...], ndim: int | None = None) -> None:
    """x is a tensor/array of one of the ``allowed`` dtypes (and of ``ndim`` dimensions when given)."""
    check_array(x, name)
    if dtype_name(x) not in allowed:
        want = " or ".join(allowed)
        hint = " (convert with .float() or .astype(np.float32))" if allowed == ("float32",) else ""
        raise TypeError(f"{name} must have dtype {want}, got {dtype_name(x)}{hint}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")


def to_numpy(x: Array) -> np.ndarray:
    """A C-contiguous numpy array with x's data (a zero-copy view when possible; device tensors are copied)."""
    if is_torch(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.contiguous().resolve_conj().resolve_neg().numpy()
    return np.ascontiguousarray(x)


def cpu_numpy(x: Array, name: str) -> np.ndarray:
    """As :func:`to_numpy`, for kernels that exist on CPU only: a device tensor is a ``ValueError``."""
    if on_device(x):
        raise ValueError(f"{name} is on {x.device}; the packed kernels run on CPU tensors")
    return to_numpy(x)


def check_eps(eps: Any, where: str) -> float:
    """A norm's ``eps`` as a float: finite and >= 0 (``where`` names the function in the error)."""
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{where}: eps must be finite and >= 0, got {eps}")
    return eps


def plain(v: Any) -> Any:
    """A tensor as a CPU numpy array; anything else as it is (scales and zero points given either way)."""
    return v.detach().cpu().numpy() if is_torch(v) else v


def as_int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or (is_torch(v) and v.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None


def check_k(k: Any, n: int, lo: int) -> int:
    k = as_int(k, "k")
    if not lo <= k <= n:
        raise ValueError(f"k must be in [{lo}, {n}] (the number of elements), got {k}")
    return k


def as_float32_list(xs: Any, name: str) -> list:
    if isinstance(xs, (torch.Tensor, np.ndarray)) or not isinstance(xs, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors/arrays, got {type(xs).__name__}")
    xs = list(xs)
    for i, x in enumerate(xs):
        check_dtype(x, f"{name}[{i}]", ("float32",))
    return xs


def list_on_device(xs: list, name: str) -> bool:
    """Whether the list runs on the torch twins; a list must not mix devices."""
    devices = {str(x.device) if is_torch(x) else "cpu" for x in xs}
    if len(devices) > 1:
        raise ValueError(f"{name} must all be on one device, got {sorted(devices)}")
    return bool(xs) and on_device(xs[0])


def normalize_axis(axis: Any, ndim: int) -> int | None:
    if axis is None:
        return None
    a = as_int(axis, "axis")
    if not -ndim <= a < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim}) for a {ndim}-d input, got {a}")
    return a % ndim


def empty_like(x: Array, shape: tuple, np_dtype: type, torch_dtype: torch.dtype) -> Array:
    """An uninitialised output of x's kind (and device)."""
    if is_torch(x):
        return torch.empty(shape, dtype=torch_dtype, device=x.device)
    return np.empty(shape, dtype=np_dtype)


#: Outputs of at least this many bytes come from numpy (:func:`float_output`): numpy asks the kernel for transparent
#: huge pages on buffers from 4 MiB up.
HUGE_OUTPUT_BYTES = 1 << 22


def float_output(*shape: int) -> torch.Tensor:
    """An uninitialised float32 CPU tensor for a kernel to write into.

    Why not ``torch.empty``: an output of several MB is a fresh mapping whose pages fault in on the kernel's first
    writes, and torch's allocator leaves them 4 KiB pages. numpy advises the kernel to back buffers of 4 MiB and
    more with 2 MiB pages (``madvise(MADV_HUGEPAGE)``, where transparent huge pages are on ``madvise``), so the
    same first writes fault 512 times less often: a fresh 2048 x 4096 output cost 8193 faults and 15 ms of CPU
    through ``torch.empty``, 528 faults and 6 ms through numpy (one thread, written once). Smaller outputs use
    ``torch.empty`` (no numpy round trip for a decode step's few KB)."""
    if 4 * math.prod(shape) < HUGE_OUTPUT_BYTES:
        return torch.empty(shape, dtype=torch.float32)
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def numpy_out(out: Array) -> np.ndarray:
    """The numpy view the native module writes into (outputs are C-contiguous CPU tensors or arrays)."""
    return out.numpy() if is_torch(out) else out


def writable(w: Array, name: str) -> tuple[np.ndarray, bool]:
    """A writable contiguous numpy array for w and whether it is a copy that must be written back."""
    if is_torch(w):
        t = w.detach()
        if t.is_contiguous() and not t.is_conj() and not t.is_neg():
            return t.numpy(), False
        return t.contiguous().resolve_conj().resolve_neg().numpy().copy(), True
    if not w.flags.writeable:
        raise ValueError(f"{name} is read-only: expected a writable array")
    if w.flags.c_contiguous:
        return w, False
    return np.ascontiguousarray(w), True


def write_back(w: Array, buf: np.ndarray) -> None:
    if is_torch(w):
        with torch.no_grad():
            w.detach().copy_(torch.from_numpy(buf))
    else:
        w[...] = buf


def _byte_span(x: Array) -> tuple[int, int, Any] | None:
    """``(first byte, one past the last byte, storage identity)`` of the memory x can touch, None if empty."""
    if is_torch(x):
        if x.numel() == 0:
            return None
        lo = x.data_ptr() + sum(min(st, 0) * (n - 1) for st, n in zip(x.stride(), x.shape)) * x.element_size()
        hi = x.data_ptr() + (sum(max(st, 0) * (n - 1) for st, n in zip(x.stride(), x.shape)) + 1) * x.element_size()
        return lo, hi, (x.device.type, x.device.index)
    if x.size == 0:
        return None
    lo, hi = np.byte_bounds(x) if hasattr(np, "byte_bounds") else np.lib.array_utils.byte_bounds(x)
    return lo, hi, ("cpu", None)


def check_no_overlap(out: Array, x: Array, out_name: str, x_name: str) -> None:
    """Refuses an ``out`` whose memory overlaps ``x``'s: the kernels read ``x`` while writing ``out`` in
    chunks, in parallel and in a different element size, so an overlap gives wrong values, not an in-place
    result. Conservative (the address ranges of both, strides included), never a false negative."""
    a, b = _byte_span(out), _byte_span(x)
    if a is None or b is None or a[2] != b[2]:
        return
    if a[0] < b[1] and b[0] < a[1]:
        raise ValueError(f"{out_name} overlaps {x_name} in memory (a view of it?): pass a separate output "
                         f"buffer, or out=None")


def check_out(out: Any, like: Array, shape: tuple, dtype: str, like_name: str) -> None:
    """A caller-given output: the right dtype, kind, shape, device, C-contiguous, writable, and not
    sharing memory with the input it is computed from."""
    check_dtype(out, "out", (dtype,))
    if is_torch(out) != is_torch(like):
        raise TypeError(f"out must be a {'torch.Tensor' if is_torch(like) else 'numpy.ndarray'} like the input")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    contiguous = out.is_contiguous() if is_torch(out) else out.flags.c_contiguous and out.flags.writeable
    if not contiguous or (is_torch(out) and out.device != like.device):
        raise ValueError("out must be a writable C-contiguous tensor/array on the input's device")
    check_no_overlap(out, like, "out", like_name)
