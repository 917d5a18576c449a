"""Pure numpy quantization arithmetic: scales, zero points, reference quantize/dequantize.

Everything the graph rewrite writes into the model comes from here, so it can be tested without
a graph. Scales are float32 (the dtype ONNX stores), rounding is half-to-even like
``QuantizeLinear``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

QuantDType = Literal["uint8", "int8", "uint16", "int16", "int32"]

_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}

# The smallest scale we ever emit. A zero range (a constant tensor) must not give a zero scale,
# and a float32 subnormal scale makes x / scale overflow on real data.
MIN_SCALE = float(np.finfo(np.float32).tiny) * 2**23


def qrange(dtype: QuantDType, reduce_range: bool = False) -> tuple[int, int]:
    """Integer range of ``dtype``; ``reduce_range`` drops one bit (7-bit int8 weights).

    Symmetric signed types use ``[-qmax, qmax]`` (e.g. -127..127) so that zero is exactly in the
    middle and negation is lossless.
    """
    lo, hi = _RANGES[dtype]
    if reduce_range:
        bits = int(np.log2(hi - lo + 1)) - 1
        if lo < 0:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2**bits - 1
    return lo, hi


def np_dtype(dtype: QuantDType) -> np.dtype:
    return np.dtype(dtype)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor; arrays of shape (C,) when per-channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QuantDType
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None


def _as_scale(value: np.ndarray) -> np.ndarray:
    scale = np.asarray(value, dtype=np.float64)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return np.maximum(scale, MIN_SCALE).astype(np.float32)


def asymmetric(lo: float, hi: float, dtype: QuantDType = "uint8") -> QParams:
    """Per-tensor asymmetric params covering ``[lo, hi]`` widened to include 0.

    Zero must be exactly representable (zero padding, ReLU outputs). A zero range gives scale 1
    and the zero point that represents 0, never a zero scale.
    """
    qmin, qmax = qrange(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    if hi - lo <= 0:
        zp = int(np.clip(0, qmin, qmax))
        return QParams(np.array(1.0, np.float32), np.array(zp, np_dtype(dtype)), dtype)
    scale = _as_scale(np.array((hi - lo) / (qmax - qmin)))
    zp = int(np.clip(np.round(qmin - lo / float(scale)), qmin, qmax))
    return QParams(scale.reshape(()), np.array(zp, np_dtype(dtype)), dtype)


def above(params: QParams, bound: float) -> QParams:
    """``params`` with a zero point whose lowest value is not below ``bound``, one step lower
    where rounding put it below (a Clip's output: onnxruntime drops the Clip only when its Q
    cannot reach past the Clip's bounds); as they are where no zero point can (``bound`` > 0)."""
    if params.per_channel or not np.isfinite(bound):
        return params
    qmin, _ = qrange(params.dtype)
    scale = np.float32(params.scale)
    zp = int(params.zero_point)
    if np.float32(scale * np.float32(qmin - zp)) >= bound:
        return params
    lowered = int(np.floor(qmin - bound / float(scale)))
    if lowered < qmin or np.float32(scale * np.float32(qmin - lowered)) < np.float32(bound):
        return params
    return QParams(params.scale, np.array(lowered, params.zero_point.dtype), params.dtype)


def symmetric(
    absmax: np.ndarray | float,
    dtype: QuantDType = "int8",
    axis: int | None = None,
    reduce_range: bool = False,
) -> QParams:
    """Symmetric params (zero point at the middle of the range) for ``|x| <= absmax``.

    ``absmax`` is a scalar, or one value per channel along ``axis``. Unsigned types put the zero
    point at 128 (or 32768) so symmetric weights also work in u8u8 kernels.
    """
    qmin, qmax = qrange(dtype, reduce_range)
    absmax = np.asarray(absmax, dtype=np.float64)
    if qmin < 0:
        half = min(-qmin, qmax)
        zp_value = 0
    else:
        half = (qmax - qmin) // 2
        zp_value = qmin + half + 1
    scale = _as_scale(absmax / half)
    zero_point = np.full(scale.shape, zp_value, dtype=np_dtype(dtype))
    return QParams(scale, zero_point, dtype, axis)


def per_channel_absmax(weight: np.ndarray, axis: int) -> np.ndarray:
    """Max |w| for each slice along ``axis``."""
    moved = np.moveaxis(np.abs(weight.astype(np.float64)), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1) if moved.size else np.zeros(moved.shape[0])


def _broadcast(params: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = params.scale.astype(np.float64)
    zp = params.zero_point.astype(np.float64)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * ndim
        shape[params.axis] = scale.shape[0]
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """Reference ``QuantizeLinear``: round half to even, saturate."""
    scale, zp = _broadcast(params, x.ndim)
    qmin, qmax = _RANGES[params.dtype]
    q = np.clip(np.rint(x.astype(np.float64) / scale) + zp, qmin, qmax)
    return q.astype(np_dtype(params.dtype))


def dequantize(q: np.ndarray, params: QParams) -> np.ndarray:
    """Reference ``DequantizeLinear``."""
    scale, zp = _broadcast(params, q.ndim)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    return dequantize(quantize(x, params), params)
