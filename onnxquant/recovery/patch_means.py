"""The mean input patch a convolution's kernel sees, per input channel and kernel tap.

A layer's mean output is linear in its input: for a Conv, the mean over output positions of
``conv(x, W)[o]`` is ``sum over c, k of W[o, c, k] * P[c, k]``, where ``P[c, k]`` is the mean of
the (zero-padded) input value under tap ``k`` over every output position. Bias correction
needs only these means, of the input and of its rounding error, never a second convolution:
that is what makes it cheap (see ``bias_correction``). Pure numpy, float64 sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant.passes.node_index import attributes


@dataclass(frozen=True)
class ConvGeometry:
    """Where a Conv's kernel taps read its input: per spatial axis kernel size, stride,
    dilation and pads (begin, end); ``auto_pad`` SAME_* pads depend on the input size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins then ends, as in ONNX
    auto_pad: str = "NOTSET"

    @classmethod
    def of(cls, node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> ConvGeometry:
        attrs = attributes(node)
        kernel = tuple(int(k) for k in weight_shape[2:])
        rank = len(kernel)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        return cls(kernel=kernel,
                   strides=tuple(int(s) for s in attrs.get("strides", [1] * rank)),
                   dilations=tuple(int(d) for d in attrs.get("dilations", [1] * rank)),
                   pads=tuple(int(p) for p in attrs.get("pads", [0] * (2 * rank))),
                   auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad))

    @property
    def pointwise(self) -> bool:
        """Every tap reads every input position once: the patch mean is the channel mean."""
        return (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides)
                and self.auto_pad in ("NOTSET", "VALID") and not any(self.pads))

    def axis(self, i: int, length: int) -> tuple[int, int]:
        """(output length, begin pad) along spatial axis ``i`` for an input of ``length``."""
        k, s, d = self.kernel[i], self.strides[i], self.dilations[i]
        span = d * (k - 1) + 1
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-length // s)
            total = max(0, (out - 1) * s + span - length)
            begin = total - total // 2 if self.auto_pad == "SAME_LOWER" else total // 2
            return out, begin
        rank = len(self.kernel)
        begin, end = (0, 0) if self.auto_pad == "VALID" else (self.pads[i], self.pads[rank + i])
        return (length + begin + end - span) // s + 1, begin


def tap_selection(geometry: ConvGeometry, i: int, length: int) -> np.ndarray:
    """0/1 matrix (taps x input length) along spatial axis ``i``: which input indices each
    kernel tap reads over the output positions (each at most once). Multiplying the input by
    it along that axis gives the per-tap sums ``patch_means`` takes, as one matrix product."""
    out, begin = geometry.axis(i, length)
    k, s, d = geometry.kernel[i], geometry.strides[i], geometry.dilations[i]
    select = np.zeros((k, length), np.float32)
    reads = np.arange(k)[:, None] * d - begin + np.arange(max(out, 0))[None, :] * s
    for tap, row in enumerate(reads):
        select[tap, row[(row >= 0) & (row < length)]] = 1.0
    return select


def _tap_sums(a: np.ndarray, axis: int, out: int, kernel: int, stride: int, dilation: int,
              begin: int) -> np.ndarray:
    """``a`` with ``axis`` replaced by one entry per kernel tap: the sum, over output positions,
    of the input index that tap reads there (padding reads zero, so it adds nothing)."""
    length = a.shape[axis]
    taps = []
    class_sums: dict[int, np.ndarray] = {}

    def part(start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop, stride)
        return a[tuple(index)].sum(axis=axis, dtype=np.float64)

    for k in range(kernel):
        start = k * dilation - begin  # the input index the tap reads at output 0
        lo = max(0, -(start // stride))  # first output whose read is inside the input
        hi = min(out - 1, (length - 1 - start) // stride)
        if hi < lo:
            shape = list(a.shape)
            del shape[axis]
            taps.append(np.zeros(shape, np.float64))
            continue
        first, last = start + lo * stride, start + hi * stride
        residue = first % stride
        inside = hi - lo + 1
        if 2 * inside < len(range(residue, length, stride)):
            taps.append(part(first, last + 1))
            continue
        # Most of the residue class: its whole sum (shared by the taps of that class) minus the ends.
        if residue not in class_sums:
            class_sums[residue] = part(residue, length)
        taps.append(class_sums[residue] - part(residue, first) - part(last + stride, length))
    return np.stack(taps, axis=axis)


def patch_means(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """``P[c, *k]``: the mean, over the batch and every output position, of the zero-padded
    input that kernel tap ``k`` of channel ``c`` reads (``x`` is N, C, *spatial)."""
    a = x[0] if x.shape[0] == 1 else x.sum(axis=0, dtype=np.float64)
    positions = x.shape[0]
    for i, length in enumerate(x.shape[2:]):
        out, begin = geometry.axis(i, length)
        positions *= max(out, 0)
        a = _tap_sums(a, 1 + i, out, geometry.kernel[i], geometry.strides[i], geometry.dilations[i], begin)
    return np.asarray(a, np.float64) / max(positions, 1)


def conv_mean_output(weight: np.ndarray, means: np.ndarray, group: int) -> np.ndarray:
    """Per output channel, ``sum over c, k of weight[o, c, k] * means[c, k]`` within each group, summed
    in a fixed order (einsum, not BLAS, whose thread count could change the last bits)
    (``weight`` is O, C/group, *kernel; ``means`` is C, *kernel)."""
    out = weight.shape[0]
    w = weight.reshape(group, out // group, -1).astype(np.float64)
    p = means.reshape(group, -1)
    return np.einsum("gok,gk->go", w, p).reshape(out)
