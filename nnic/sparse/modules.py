"""``SparseLinear``: a Linear layer that stores and computes only its non-zero weights.

It holds its weight in the storage form of :mod:`nnic.sparse.layout` as buffers (bitmask + values, or N:M values
+ nibble indices; float32 values, or int8 codes with one scale per output channel), so ``state_dict`` and
``nnic.speedup.save_pruned`` files shrink with the density, and a compute copy for the Rust kernels, rebuilt
when the buffers change (``load_state_dict``, ``.to()``). CPU tensors run :func:`nnic.kernels.sparse_linear`;
other devices use torch's sparse CSR matmul (N:M weights are expanded into the same CSR form there).

int8 layers made from :class:`~nnic.quantization.modules.Int8Linear` keep its activation quantization
(``act``): the kernels sum ``code · (q - z)`` of the same integer codes and scale once, so the output equals the
dense int8 layer's up to float rounding of the sums. Inference only: no gradients flow (values are buffers).

``activation`` (``"relu"``, ``"gelu"``: the exact erf form) runs in the kernels' epilogue on each task's outputs
while they are in cache, as ``Int8Linear.activation`` does: a transformer MLP's ``act(fc(x))`` then costs no torch
call between the product and the next layer (:func:`nnic.quantization.fusion.fuse_activation` moves it there).
Like the other fusions it is not saved: the file describes the model's own modules, whose activation module a
loaded model runs again, so fuse after loading.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from nnic import kernels
from nnic.sparse import layout

ACT_MODES = kernels.SPARSE_ACT_MODES
#: Element-wise functions the kernels apply after the bias (None: none), as for ``Int8Linear``.
ACTIVATIONS = (None, *kernels.ACTIVATIONS[1:])

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
    """``y = activation(act(x) @ W.T (· weight_scale) + bias)`` with ``W`` stored sparse.

    Build it with :meth:`from_dense`, :meth:`from_linear` or :meth:`from_int8`.

    :param nm: ``(n, m)`` for the N:M layout, None for the unstructured (bitmask / CSR) one.
    :param dtype: ``"float32"`` values, or ``"int8"`` codes with ``weight_scale``.
    :param act: activation quantization of int8 layers (see :data:`nnic.kernels.SPARSE_ACT_MODES`).
    :param activation: applied to the output in the kernels' epilogue (see :data:`ACTIVATIONS`).
    """

    #: Its kernels' epilogue applies ``activation`` (see :func:`nnic.quantization.fusion.takes_activation`).
    takes_fused_activation = True

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, nm: tuple[int, int] | None = None,
                 dtype: str = "float32", act: str | None = None, nnz: int = 0, activation: str | None = None) -> None:
        super().__init__()
        if dtype not in ("float32", "int8"):
            raise ValueError(f"dtype must be 'float32' or 'int8', got {dtype!r}")
        if act not in ACT_MODES:
            raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.nm = None if nm is None else (int(nm[0]), int(nm[1]))
        self.dtype_name, self.act = dtype, act
        vdtype = torch.float32 if dtype == "float32" else torch.int8
        if self.nm is None:
            self.register_buffer("mask_bits", torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8))
            self.register_buffer("values", torch.zeros(nnz, dtype=vdtype))
        else:
            n, m = self.nm
            length = in_features // m * n
            self.register_buffer("index", torch.zeros(out_features, -(-length // 2), dtype=torch.uint8))
            self.register_buffer("values", torch.zeros(out_features * length, dtype=vdtype))
        self.register_buffer("weight_scale", torch.ones(out_features) if dtype == "int8" else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        if act == "static":
            self.register_buffer("act_scale", torch.tensor(1.0))
            self.register_buffer("act_zero_point", torch.tensor(0, dtype=torch.int32))
        self._packed: Any = None
        self._packed_key: tuple = ()
        self._device_weight: tuple[Any, torch.Tensor] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, keep: torch.Tensor | None = None,
                   nm: tuple[int, int] | None = None, weight_scale: Any = None, act: str | None = None,
                   act_scale: float | None = None, act_zero_point: int | None = None,
                   activation: str | None = None) -> SparseLinear:
        """From a dense ``weight[out, in]`` (float32, or int8 codes with ``weight_scale``) stored where ``keep``
        (default: its non-zeros)."""
        layout._check_2d(weight, "weight")
        if weight.dtype not in (torch.float32, torch.int8):
            raise TypeError(f"weight must be float32 or int8 codes, got {weight.dtype}")
        if bool(torch.isnan(weight.float()).any()) if weight.is_floating_point() else False:
            raise ValueError("weight contains NaN")
        w = weight.detach().cpu()
        keep = (w != 0) if keep is None else (keep.detach().cpu().bool() & (w != 0))
        out_f, in_f = w.shape
        if in_f > layout.MAX_IN_FEATURES:
            raise ValueError(f"in_features = {in_f} is too large for the sparse kernels (at most {layout.MAX_IN_FEATURES})")
        dtype = "int8" if w.dtype == torch.int8 else "float32"
        mod = cls(in_f, out_f, bias=bias is not None, nm=nm, dtype=dtype, act=act, nnz=int(keep.sum()),
                  activation=activation)
        if mod.nm is None:
            mod.mask_bits = layout.pack_bitmask(keep)
            mod.values = w[keep].contiguous()
        else:
            mod.values, mod.index = layout.pack_nm(w, keep, *mod.nm)
        if dtype == "int8":
            if weight_scale is None:
                raise ValueError("int8 weight codes need weight_scale (one per output channel, or one)")
            s = torch.as_tensor(weight_scale, dtype=torch.float32).detach().cpu().reshape(-1)
            if s.numel() not in (1, out_f) or not bool((torch.isfinite(s) & (s > 0)).all()):
                raise ValueError(f"weight_scale must be 1 or {out_f} positive finite values")
            mod.weight_scale = s.expand(out_f).contiguous()
        if bias is not None:
            mod.bias = bias.detach().float().cpu().clone()
        if act == "static":
            if act_scale is None or act_zero_point is None:
                raise ValueError("act='static' needs act_scale and act_zero_point")
            mod.act_scale = torch.tensor(float(act_scale))
            mod.act_zero_point = torch.tensor(int(act_zero_point), dtype=torch.int32)
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, nm: tuple[int, int] | None = None) -> SparseLinear:
        """From a float ``nn.Linear`` (its effective weight: mask parametrizations applied), stored where non-zero."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        return cls.from_dense(linear.weight.detach().float(), linear.bias, nm=nm)

    @classmethod
    def from_int8(cls, q: nn.Module, *, nm: tuple[int, int] | None = None) -> SparseLinear:
        """From an :class:`~nnic.quantization.modules.Int8Linear` with zero weight zero points: the same codes,
        scales, bias, activation quantization and fused activation, stored where the codes are non-zero."""
        from nnic.quantization.modules import Int8Linear

        if not isinstance(q, Int8Linear):
            raise TypeError(f"expected an Int8Linear, got {type(q).__name__}")
        if bool(q.weight_zero_point.any()):
            raise ValueError("Int8Linear with non-zero weight zero points has no sparse form (pruned weights are "
                             "not code 0); quantize the weights symmetrically")
        act = q.act if q.act == "static" else q.act + ("_symmetric" if q.symmetric else "")
        static = {"act_scale": float(q.act_scale), "act_zero_point": int(q.act_zero_point)} if q.act == "static" else {}
        return cls.from_dense(q.weight, q.bias, nm=nm, weight_scale=q.weight_scale, act=act, activation=q.activation,
                              **static)

    # ------------------------------------------------------------------ state
    @property
    def layout(self) -> str:
        """``"csr"`` or ``"n:m"``."""
        return "csr" if self.nm is None else f"{self.nm[0]}:{self.nm[1]}"

    @property
    def nnz(self) -> int:
        """Stored values (N:M padding slots included)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.in_features * self.out_features)

    def storage_bytes(self) -> int:
        """Bytes of this layer's tensors in a state dict (what a safetensors file holds for it)."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values() if t is not None)

    def stored_mask(self) -> torch.Tensor:
        """Bool ``[out, in]``: where a value is stored (N:M padding slots excluded when their value is 0)."""
        return self._dense_values() != 0 if self.nm is not None else layout.unpack_bitmask(self.mask_bits, self.in_features)

    def _dense_values(self) -> torch.Tensor:
        """The stored values scattered into ``[out, in]``, in their own dtype (float32, or int8 codes)."""
        if self.nm is None:
            w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
            w[layout.unpack_bitmask(self.mask_bits, self.in_features)] = self.values
            return w
        return layout.unpack_nm(self.values.float(), self.index, self.in_features, *self.nm).to(self.values.dtype)

    def dense_weight(self) -> torch.Tensor:
        """The dense float32 ``[out, in]`` weight (int8 codes times their scales)."""
        w = self._dense_values().float()
        return w if self.weight_scale is None else w * self.weight_scale[:, None]

    def select(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> SparseLinear:
        """A new layer with only output channels ``rows`` and inputs ``cols`` (sorted positions; None keeps all):
        what speedup does when channels around this layer are removed. Keeps the N:M layout while it still fits."""
        w, bias, scale = self._dense_values(), self.bias, self.weight_scale
        if rows is not None:
            w, bias = w[rows], None if bias is None else bias[rows]
            scale = None if scale is None else scale[rows]
        if cols is not None:
            w = w[:, cols]
        nm = self.nm if self.nm and w.shape[1] % self.nm[1] == 0 and layout.nm_pattern(w != 0, (self.nm,), 1e9) else None
        static = {"act_scale": float(self.act_scale), "act_zero_point": int(self.act_zero_point)} \
            if self.act == "static" else {}
        return SparseLinear.from_dense(w, bias, nm=nm, weight_scale=scale, act=self.act, activation=self.activation,
                                       **static)

    def _packed_weight(self):
        """The kernels' form of the weight, rebuilt when a weight buffer was replaced or changed in place."""
        return self._compute_form()[0]

    def _compute_form(self) -> tuple[Any, np.ndarray | None, float | None, int | None]:
        """The packed weight, the bias as a numpy view and the static activation scale and zero point (None
        unless ``act="static"``), cached: per call only the buffers' identities and versions are compared (a
        tuple of their shapes and pointers cost more than the product of a small layer)."""
        b = self._buffers
        srcs = (b["values"], b.get("mask_bits"), b.get("index"), b.get("weight_scale"), b.get("bias"),
                b.get("act_scale"), b.get("act_zero_point"))
        key = tuple(-1 if t is None else t._version for t in srcs)
        cached = self._packed
        if cached is None or key != self._packed_key or any(a is not c for a, c in zip(srcs, cached[-1])):
            values, scale = srcs[0].cpu(), None if srcs[3] is None else srcs[3].cpu()
            if self.nm is None:
                packed = kernels.sparse_weight_csr(srcs[1].cpu(), self.in_features, values, scale)
            else:
                packed = kernels.sparse_weight_nm(srcs[2].cpu(), self.in_features, *self.nm, values, scale)
            bias = None if srcs[4] is None else srcs[4].detach().cpu().float().contiguous().numpy()
            static = (float(srcs[5]), int(srcs[6])) if self.act == "static" else (None, None)
            cached = (packed, bias, *static, srcs)
            self._packed, self._packed_key = cached, key
        return cached[:4]

    def _flush_native_caches(self) -> None:
        """Evicts the packed weight from the CPU caches (see :func:`nnic.kernels.flush_caches`, which calls this)."""
        if self._packed is not None:
            self._packed[0].flush_caches()

    def _apply(self, fn, recurse=True):
        self._packed = None  # .to() / .cuda() replace the buffers: do not keep the old ones alive in the cache
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        if x.is_cpu:
            # One native call (the checks of kernels.sparse_linear are known to hold here: a packed weight, a
            # float32 bias, a validated act mode): each torch or Python call around a kernel costs microseconds,
            # and tens of them right after a large product evicted their code and data (docs/sparse.md).
            if x.dtype != torch.float32:
                x = x.float()
            packed, bias, act_scale, act_zero_point = self._compute_form()
            return torch.from_numpy(packed.forward(x.detach().numpy(), bias, self.act, act_scale, act_zero_point,
                                                   self.activation))
        lead = x.shape[:-1]
        return self._forward_torch_sparse(x.reshape(-1, self.in_features).float()).reshape(*lead, self.out_features)

    def _forward_torch_sparse(self, x: torch.Tensor) -> torch.Tensor:
        """Other devices: torch's sparse CSR matmul of the dequantized values (activations fake-quantized with the
        same formulas for int8 layers), then the activation."""
        key = (x.device, tuple((t.data_ptr(), t._version) for t in self._buffers.values() if t is not None))
        if self._device_weight is None or self._device_weight[0] != key:
            with warnings.catch_warnings():  # torch calls its sparse CSR support beta on every construction
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._device_weight = (key, self.dense_weight().to(x.device).to_sparse_csr())
        w = self._device_weight[1]
        scale = None
        if self.act is not None:
            x, scale = _fake_quant_torch(x, self.act, getattr(self, "act_scale", None), getattr(self, "act_zero_point", None))
        y = torch.sparse.mm(w, x.t()).t()
        if scale is not None:
            y = y * scale
        y = y if self.bias is None else y + self.bias.to(y.device)
        return kernels.twins.activation(y, self.activation)

    # ------------------------------------------------------------------ files
    def manifest_attrs(self) -> dict[str, Any]:
        # no ``activation``: the parent's activation module, which fusion replaced by nn.Identity, is rebuilt on load
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "nm": None if self.nm is None else list(self.nm), "dtype": self.dtype_name, "act": self.act,
                "nnz": self.nnz}

    @classmethod
    def from_manifest(cls, attrs: dict[str, Any]) -> SparseLinear:
        nm = attrs.get("nm")
        return cls(attrs["in_features"], attrs["out_features"], bias=attrs["bias"], nm=None if nm is None else tuple(nm),
                   dtype=attrs["dtype"], act=attrs.get("act"), nnz=attrs.get("nnz", 0))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}, "
                f"dtype={self.dtype_name}, density={self.density:.3f}" + (f", act={self.act}" if self.act else "")
                + (f", activation={self.activation}" if self.activation else ""))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"], state["_device_weight"] = None, (), None
        return state


def _fake_quant_torch(x: torch.Tensor, act: str, act_scale, act_zero_point) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred activation codes ``q - z`` (float) and per-row scales, with the int8 GEMM's formulas."""
    if act == "static":
        s = act_scale.to(x.device).float().reshape(1, 1).expand(x.shape[0], 1)
        z = act_zero_point.to(x.device).float().reshape(1, 1)
    else:
        dims = {"dim": 1, "keepdim": True} if act.startswith("per_token") else {}
        lo = torch.clamp(x.amin(**dims), max=0).reshape(-1, 1).expand(x.shape[0], 1) if dims else \
            torch.clamp(x.amin(), max=0).reshape(1, 1).expand(x.shape[0], 1)
        hi = torch.clamp(x.amax(**dims), min=0).reshape(-1, 1).expand(x.shape[0], 1) if dims else \
            torch.clamp(x.amax(), min=0).reshape(1, 1).expand(x.shape[0], 1)
        if act.endswith("symmetric"):
            s = torch.maximum(-lo, hi) / 127
            z = torch.full_like(s, 128.0)
        else:
            s = (hi - lo) / 255
        s = torch.where(s == 0, torch.ones_like(s), s.clamp(min=torch.finfo(torch.float32).tiny))
        if not act.endswith("symmetric"):
            z = torch.clamp(-torch.round(lo / s), 0, 255)
    q = torch.clamp(torch.round(x * (1.0 / s)) + z, 0, 255) - z
    return q, s
