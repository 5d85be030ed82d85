"""The calibration: what a quantizer decided for each layer, as typed objects that round-trip to the JSON file.

A quantizer's ``export_model`` writes, and ``nnic.quantization_speedup`` reads, one entry per layer::

    {"fc1": {"weight_bits": 8, "weight_dtype": "int", "weight_scheme": "per_channel_symmetric",
             "weight_axis": 0, "weight_scale": [...], "weight_zero_point": [...],
             "input_bits": 8, "input_dtype": "uint", "input_scheme": "per_tensor_affine",
             "tracked_min_input": 0.0, "tracked_max_input": 5.4, "input_scale": 0.021, "input_zero_point": 0}}

For each quantized tensor ``t`` in ``weight``, ``input``, ``output``:

=========================  =====================================================================================
key                        meaning
=========================  =====================================================================================
``{t}_bits``               1-32 (1 only with dtype ``binary``)
``{t}_dtype``              ``int`` or ``uint`` (``binary``: BNN's ±1)
``{t}_scheme``             ``per_tensor_symmetric`` (default), ``per_tensor_affine``, ``per_channel_symmetric``,
                           ``per_channel_affine``
``{t}_axis``               the channel dimension of a per-channel scheme (0 for weights, 1 for activations)
``{t}_group_size``         group-wise scales: one per channel and group of this many inputs (weights, 2-D)
``{t}_perm``               with a group size: the input columns in quantization order (GPTQ's act-order); column
                           ``perm[j]`` belongs to group ``j // group_size``
``{t}_scale``              positive finite scale(s): a number, one per channel, or ``[channels][groups]``
``{t}_zero_point``         integer zero point(s) in the code range, shaped like the scale (or one)
``tracked_min_{t}``,       the calibrated range (activations): finite, min <= max
``tracked_max_{t}``
``folded_bn``              QAT: the BatchNorm folded into this convolution
=========================  =====================================================================================

A plain ``{layer: bits}`` entry means "quantize this weight directly". :meth:`Calibration.from_dict` checks every
entry by layer and key, the way config lists are checked, so a contradictory file fails with, for example,
``calibration['fc1']['weight_dtype']: expected 'int' or 'uint', got 'float'`` instead of computing nonsense.
Files written by earlier nnic versions have exactly this shape and load unchanged.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nnic import io
from nnic.quantization.qparams import SCHEMES, QuantSpec

QUANT_TYPES = ("weight", "input", "output")
_FIELDS = ("bits", "dtype", "scheme", "axis", "group_size", "perm", "scale", "zero_point")
_DTYPES = ("int", "uint")


def _keys(t: str) -> dict[str, str]:
    """The file's key for each field of quantized tensor ``t``."""
    return {**{f: f"{t}_{f}" for f in _FIELDS}, "tracked_min": f"tracked_min_{t}", "tracked_max": f"tracked_max_{t}"}


_KNOWN_KEYS = frozenset(k for t in QUANT_TYPES for k in _keys(t).values()) | {"folded_bn"}


class _Where:
    """Formats ``calibration['fc1']['weight_scale']``-style locations for error messages."""

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def __call__(self, key: str | None = None) -> str:
        return f"calibration[{self.layer!r}]" + (f"[{key!r}]" if key is not None else "")


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(where: str, value: Any, *, integral: bool, expected: str | None = None) -> torch.Tensor:
    """A number or (nested) list of finite numbers as a float64 tensor; refuses bools, strings, ragged lists,
    NaN and infinities, and fractions where ``integral``. ``expected`` phrases the values in messages."""
    expected = expected or ("finite integers" if integral else "finite numbers")
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, list, tuple)) or _has_bool(value):
            raise TypeError
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: expected a number or a (nested) list of {expected}, got {_got(value)}") from None
    if t.numel() == 0:
        raise ValueError(f"{where}: expected at least one value, got {_got(value)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: expected {expected}, got {_got(value)}")
    if integral and not bool((t == t.round()).all()):
        raise ValueError(f"{where}: expected integers, got {_got(value)} (a fractional zero point would be "
                         f"truncated)")
    return t


def _has_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _int(where: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: expected an int, got {_got(value)}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{where}: expected an int {bounds}, got {value}")
    return int(value)


@dataclass(eq=False)
class TensorCalibration:
    """How one tensor (a layer's weight, input or output) is quantized: its spec and its parameters.

    ``scale`` (float64: the file's values exactly; kernels use them as float32) and ``zero_point`` (int64) are
    0-d (per tensor), ``[channels]`` (per channel), or ``[channels, groups]`` (group-wise); ``None`` when only the
    bit width is known (a plain ``{layer: bits}``, written back as ``{"weight_bits": bits, ...}``).
    """

    bits: int
    dtype: str = "int"
    scheme: str = "per_tensor_symmetric"
    axis: int | None = None
    group_size: int | None = None
    perm: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    tracked_min: torch.Tensor | None = None
    tracked_max: torch.Tensor | None = None

    @property
    def spec(self) -> QuantSpec:
        """The :class:`QuantSpec` (``int``/``uint`` grids; BNN's ``binary`` has none)."""
        if self.dtype not in _DTYPES:
            raise ValueError(f"a {self.dtype} tensor has no integer grid")
        return QuantSpec.from_config(self.bits, self.dtype, self.scheme, axis=self.axis or 0)

    @property
    def per_channel(self) -> bool:
        return self.scheme.startswith("per_channel")

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], t: str, where: _Where) -> TensorCalibration | None:
        """The ``t`` part of a layer's entry (``None`` if it has no ``{t}_bits``), checked key by key."""
        keys = _keys(t)
        if keys["bits"] not in entry:
            stray = [k for k in keys.values() if k in entry]
            if stray:
                raise ValueError(f"{where(stray[0])}: given without {keys['bits']!r}")
            return None
        bits = _int(where(keys["bits"]), entry[keys["bits"]], 1, 32)
        dtype = entry.get(keys["dtype"], "int")
        if bits == 1:
            if dtype != "binary":
                raise ValueError(f"{where(keys['dtype'])}: 1 bit is only 'binary' (BNN), got {_got(dtype)}")
        elif dtype not in _DTYPES:
            raise ValueError(f"{where(keys['dtype'])}: expected 'int' or 'uint', got {_got(dtype)}")
        scheme = entry.get(keys["scheme"], "per_tensor_symmetric")
        if scheme not in SCHEMES:
            raise ValueError(f"{where(keys['scheme'])}: expected one of {', '.join(map(repr, SCHEMES))}, "
                             f"got {_got(scheme)}")
        per_channel = scheme.startswith("per_channel")
        axis = None
        if keys["axis"] in entry:
            if not per_channel:
                raise ValueError(f"{where(keys['axis'])}: only a per-channel scheme has an axis, got {scheme!r}")
            axis = _int(where(keys["axis"]), entry[keys["axis"]], 0)
        elif per_channel:
            axis = 0 if t == "weight" else 1
        group_size = perm = None
        if keys["group_size"] in entry:
            if t != "weight" or not per_channel:
                raise ValueError(f"{where(keys['group_size'])}: group-wise scales are per channel of a weight "
                                 f"(a per_channel scheme)")
            group_size = _int(where(keys["group_size"]), entry[keys["group_size"]], 1)
        if keys["perm"] in entry:
            if group_size is None:
                raise ValueError(f"{where(keys['perm'])}: a permutation needs {keys['group_size']!r}")
            perm = _numbers(where(keys["perm"]), entry[keys["perm"]], integral=True).to(torch.int64)
            if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(perm.numel())):
                raise ValueError(f"{where(keys['perm'])}: expected a permutation of 0..K-1, got "
                                 f"{_got(entry[keys['perm']])}")
        new = cls(bits, dtype, scheme, axis, group_size, perm)
        new._read_qparams(entry, keys, where)
        new._read_range(entry, keys, where)
        return new

    def _read_qparams(self, entry: Mapping[str, Any], keys: dict[str, str], where: _Where) -> None:
        if keys["scale"] not in entry:
            if keys["zero_point"] in entry:
                raise ValueError(f"{where(keys['zero_point'])}: given without {keys['scale']!r}")
            return
        scale = _numbers(where(keys["scale"]), entry[keys["scale"]], integral=False,
                         expected="positive finite scales")
        if not bool((scale > 0).all()):
            raise ValueError(f"{where(keys['scale'])}: expected positive finite scales, got "
                             f"{_got(entry[keys['scale']])}")
        expected_dim = 2 if self.group_size is not None else 1 if self.per_channel else 0
        if scale.dim() != expected_dim and not (expected_dim == 0 and scale.numel() == 1):
            shape = ("[channels][groups]" if expected_dim == 2 else "a list, one per channel" if expected_dim == 1
                     else "one number")
            raise ValueError(f"{where(keys['scale'])}: expected {shape} for {self.scheme}"
                             f"{' with a group size' if self.group_size else ''}, got shape {tuple(scale.shape)}")
        zero = _numbers(where(keys["zero_point"]), entry.get(keys["zero_point"], 0), integral=True)
        if zero.numel() not in (1, scale.numel()):
            raise ValueError(f"{where(keys['zero_point'])}: expected 1 or {scale.numel()} zero point(s), got "
                             f"{zero.numel()}")
        if self.dtype in _DTYPES:
            spec = self.spec
            if int(zero.min()) < spec.qmin or int(zero.max()) > spec.qmax:
                raise ValueError(f"{where(keys['zero_point'])}: expected values in [{spec.qmin}, {spec.qmax}] "
                                 f"({self.bits}-bit {self.dtype}), got {_got(entry[keys['zero_point']])}")
        self.scale = scale.reshape(scale.shape if expected_dim else ())
        self.zero_point = (zero.to(torch.int64).reshape(()).expand(scale.shape) if zero.numel() == 1 else
                           zero.to(torch.int64).reshape(scale.shape)).reshape(self.scale.shape).clone()

    def _read_range(self, entry: Mapping[str, Any], keys: dict[str, str], where: _Where) -> None:
        lo_key, hi_key = keys["tracked_min"], keys["tracked_max"]
        if (lo_key in entry) != (hi_key in entry):
            present = lo_key if lo_key in entry else hi_key
            raise ValueError(f"{where(present)}: given without {(hi_key if present == lo_key else lo_key)!r}")
        if lo_key not in entry:
            return
        lo = _numbers(where(lo_key), entry[lo_key], integral=False)
        hi = _numbers(where(hi_key), entry[hi_key], integral=False)
        if lo.shape != hi.shape:
            raise ValueError(f"{where(hi_key)}: expected the shape of {lo_key!r} {tuple(lo.shape)}, got "
                             f"{tuple(hi.shape)}")
        if not bool((lo <= hi).all()):
            raise ValueError(f"{where(lo_key)}: the tracked range is empty: {_got(entry[lo_key])} > "
                             f"{_got(entry[hi_key])}")
        self.tracked_min, self.tracked_max = lo, hi

    def to_dict(self, t: str) -> dict[str, Any]:
        """The file's keys for tensor ``t`` (numbers for 0-d values, lists otherwise)."""
        keys = _keys(t)
        out: dict[str, Any] = {keys["bits"]: self.bits, keys["dtype"]: self.dtype, keys["scheme"]: self.scheme}
        if self.axis is not None:
            out[keys["axis"]] = self.axis
        if self.group_size is not None:
            out[keys["group_size"]] = self.group_size
        if self.perm is not None:
            out[keys["perm"]] = self.perm.tolist()
        if self.tracked_min is not None and self.tracked_max is not None:
            out[keys["tracked_min"]], out[keys["tracked_max"]] = self.tracked_min.tolist(), self.tracked_max.tolist()
        if self.scale is not None and self.zero_point is not None:
            out[keys["scale"]], out[keys["zero_point"]] = self.scale.tolist(), self.zero_point.tolist()
        return out


@dataclass(eq=False)
class LayerCalibration:
    """One layer's entry: the specs and parameters of its weight, input and output (each optional)."""

    weight: TensorCalibration | None = None
    input: TensorCalibration | None = None
    output: TensorCalibration | None = None
    folded_bn: str | None = None

    @classmethod
    def from_dict(cls, layer: str, raw: Any) -> LayerCalibration:
        """An entry of the file (a dict, or plain weight bits), checked key by key."""
        where = _Where(layer)
        if isinstance(raw, bool) or not isinstance(raw, (int, Mapping)):
            raise TypeError(f"{where()}: expected an int (bits) or a dict, got {type(raw).__name__}")
        entry: Mapping[str, Any] = {"weight_bits": raw} if isinstance(raw, int) else raw
        for key in entry:
            if key not in _KNOWN_KEYS:
                hint = difflib.get_close_matches(str(key), sorted(_KNOWN_KEYS), n=1)
                raise ValueError(f"{where(key)}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        folded = entry.get("folded_bn")
        if folded is not None and not isinstance(folded, str):
            raise TypeError(f"{where('folded_bn')}: expected a layer name (str), got {_got(folded)}")
        parts = {t: TensorCalibration.from_dict(entry, t, where) for t in QUANT_TYPES}
        return cls(**parts, folded_bn=folded)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in QUANT_TYPES:
            part = getattr(self, t)
            if part is not None:
                out.update(part.to_dict(t))
        if self.folded_bn is not None:
            out["folded_bn"] = self.folded_bn
        return out


@dataclass(eq=False)
class Calibration(Mapping[str, LayerCalibration]):
    """``{layer name: LayerCalibration}``: a typed, checked calibration file.

    ``Calibration.from_dict(q.calibration())``, ``Calibration.load("calibration.json")``; ``to_dict()`` /
    ``save(path)`` write the same JSON format back.
    """

    layers: dict[str, LayerCalibration] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerCalibration:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @classmethod
    def from_dict(cls, raw: Any) -> Calibration:
        """Check and type a calibration dict (``{layer: {...}}`` or ``{layer: bits}``); a ``Calibration`` passes."""
        if isinstance(raw, Calibration):
            return raw
        if not isinstance(raw, Mapping):
            raise TypeError(f"calibration must be a dict, got {type(raw).__name__}")
        layers = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"calibration: layer names must be non-empty strings, got {_got(name)}")
            layers[name] = LayerCalibration.from_dict(name, entry)
        return cls(layers)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON-ready form written by ``export_model``."""
        return {name: layer.to_dict() for name, layer in self.layers.items()}

    @classmethod
    def load(cls, path: io.PathLike) -> Calibration:
        """Read and check a calibration JSON file."""
        return cls.from_dict(io.load_json(path))

    def save(self, path: io.PathLike) -> None:
        """Write the calibration JSON atomically."""
        io.save_json(self.to_dict(), path)


__all__ = ["Calibration", "LayerCalibration", "TensorCalibration"]
