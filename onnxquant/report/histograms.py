"""Histograms for the report: weights and activations, each with the clipping range chosen for it.

A weight histogram shows the dequantized weights (what the model computes with) against the
range its scale can represent; an activation histogram shows calibration values against the
range its QuantizeLinear saturates at, and the share of values that range clips.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxquant.calibration.observers import StatsTable
from onnxquant.model_io import tensor_array
from onnxquant.ops import WEIGHTED_OPS

BINS = 48
_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
           onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535)}


@dataclass
class Histogram:
    tensor: str
    layer: str  # the node that reads (weights) or produces (activations) the tensor
    lo: float  # the histogram spans [lo, hi] in BINS equal bins
    hi: float
    counts: list[int]
    clip_lo: float
    clip_hi: float
    clipped: float  # share of values outside [clip_lo, clip_hi]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "layer": self.layer, "lo": _r(self.lo), "hi": _r(self.hi),
                "counts": self.counts, "clip_lo": _r(self.clip_lo), "clip_hi": _r(self.clip_hi),
                "clipped": round(self.clipped, 6), **({"note": self.note} if self.note else {})}


def _r(value: float) -> float:
    return float(f"{value:.6g}")


def _const(graph_tensors: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    tensor = graph_tensors.get(name)
    return tensor_array(tensor) if tensor is not None else None


def _grid(data_type: int, q: np.ndarray, reduced_ok: bool) -> tuple[int, int]:
    """The integer range a weight's scale was chosen for: symmetric signed types drop -128, and
    7-bit (reduce-range) weights use half the grid."""
    lo, hi = _RANGES[data_type]
    if lo < 0:
        lo = -hi
        if reduced_ok and q.size and q.min() >= -64 and q.max() <= 63:
            lo, hi = -64, 63
    return lo, hi


def weight_histograms(quantized: onnx.ModelProto, reduce_range: bool = True, bins: int = BINS) -> list[Histogram]:
    """One histogram per 8-bit weight behind a DequantizeLinear, in the order its layers run."""
    graph = quantized.graph
    tensors = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out, seen = [], set()
    for layer in graph.node:
        for name in layer.input[1:2] if layer.op_type in WEIGHTED_OPS else ():
            node = producer.get(name)
            if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in tensors:
                continue
            if node.input[0] in seen or tensors[node.input[0]].data_type not in _RANGES:
                continue
            seen.add(node.input[0])
            histogram = _weight_histogram(node, layer.name, tensors, reduce_range, bins)
            if histogram is not None:
                out.append(histogram)
    return out


def _weight_histogram(node: onnx.NodeProto, layer: str, tensors: dict[str, onnx.TensorProto], reduce_range: bool,
                      bins: int) -> Histogram | None:
    data_type = tensors[node.input[0]].data_type
    q = tensor_array(tensors[node.input[0]]).astype(np.int64)
    scale = _const(tensors, node.input[1])
    zero = _const(tensors, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or q.ndim == 0:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    s = scale.astype(np.float64).reshape(shape)
    z = zero.astype(np.int64).reshape(shape) if zero is not None else np.zeros_like(s, dtype=np.int64)
    values = (q - z) * s
    qlo, qhi = _grid(data_type, q, reduce_range)
    note = ""
    low, high = (qlo - z) * s, (qhi - z) * s
    if scale.size > 1:
        # The envelope of the channels' ranges; all-zero channels (pruned, dead) have a
        # placeholder scale and are left out of it.
        live = np.any((q - z) != 0, axis=tuple(i for i in range(q.ndim) if i != axis)).reshape(-1)
        flat_low, flat_high = np.broadcast_to(low, s.shape).reshape(-1), np.broadcast_to(high, s.shape).reshape(-1)
        if live.any():
            low, high = flat_low[live], flat_high[live]
        dead = int(live.size - np.count_nonzero(live))
        note = f"per-channel: {scale.size} scales; lines at the widest channel's range" + (
            f"; {dead} all-zero channels" if dead else "")
    return _histogram(node.input[0], layer, values.reshape(-1), float(np.min(low)), float(np.max(high)), bins, note)


def _histogram(tensor: str, layer: str, values: np.ndarray, clip_lo: float, clip_hi: float, bins: int,
               note: str = "") -> Histogram:
    lo = min(float(values.min()), clip_lo) if values.size else clip_lo
    hi = max(float(values.max()), clip_hi) if values.size else clip_hi
    if hi <= lo:
        hi = lo + 1.0
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi))
    outside = int(np.count_nonzero((values < clip_lo) | (values > clip_hi)))
    return Histogram(tensor, layer, lo, hi, counts.astype(int).tolist(), clip_lo, clip_hi,
                     outside / max(values.size, 1), note)


def activation_ranges(quantized: onnx.ModelProto) -> dict[str, tuple[float, float, str]]:
    """Float tensor -> (lo, hi) its QuantizeLinear saturates at, and the node that reads it."""
    graph = quantized.graph
    tensors = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in tensors:
            continue
        scale = _const(tensors, node.input[1])
        zero = _const(tensors, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1:
            continue
        data_type = tensors[node.input[2]].data_type if zero is not None else onnx.TensorProto.UINT8
        qlo, qhi = _RANGES.get(data_type, (0, 255))
        s = float(scale.reshape(()))
        z = int(zero.reshape(())) if zero is not None else 0
        out.setdefault(node.input[0], ((qlo - z) * s, (qhi - z) * s, node.name))
    return out


def activation_histograms(stats: StatsTable, quantized: onnx.ModelProto, producers: dict[str, str],
                          bins: int = BINS) -> list[Histogram]:
    """Calibration histograms of the quantized activations, re-binned to ``bins``, with the
    range the quantized model clips each one to."""
    out = []
    for tensor, (clip_lo, clip_hi, _) in activation_ranges(quantized).items():
        observed = stats.tensors.get(tensor)
        if observed is None or observed.histogram is None or observed.histogram.empty:
            continue
        hist = observed.histogram
        centers = hist.origin + hist.width * (np.arange(hist.bins) + 0.5)
        counts = hist.counts
        used = counts > 0
        lo = min(float(centers[used].min()) if used.any() else clip_lo, clip_lo)
        hi = max(float(centers[used].max()) if used.any() else clip_hi, clip_hi)
        if hi <= lo:
            hi = lo + 1.0
        rebinned, _ = np.histogram(centers, bins=bins, range=(lo, hi), weights=counts)
        total = float(counts.sum())
        # Bins wholly outside the range (a bin straddling an edge holds the exact extremes).
        outside = (centers + hist.width / 2 < clip_lo) | (centers - hist.width / 2 > clip_hi)
        clipped = float(counts[outside].sum()) / total if total else 0.0
        out.append(Histogram(tensor, producers.get(tensor, ""), lo, hi, np.rint(rebinned).astype(int).tolist(),
                             clip_lo, clip_hi, clipped))
    return out
