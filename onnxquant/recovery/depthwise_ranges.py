"""Even out the channel ranges of depthwise-convolution inputs, from calibration data.

A depthwise Conv never mixes channels, and its input has one activation scale per tensor. In
mobile CNNs the channels of that input span ranges 50x apart (PP-LCNet's text-orientation
classifier: per-channel max 0.2 to 9 in one tensor), so the quiet channels get a handful of
int8 levels, and that noise is not averaged away before the next layer: it is the model's
dominant error (there: held-out SQNR 21.8 dB with only those tensors quantized, 48 dB with one
scale per channel).

Channel ``c`` can be magnified by ``k_c > 0`` without changing the function wherever it runs
through a *region* of per-channel ops between Convs: the producing Conv's output channel ``c``
(weights and bias) is multiplied by ``k_c``; every op on the way commutes with a per-channel
positive scale (ReLU, LeakyReLU, PReLU, Clip(0, none), pools, a Mul by something the region
does not scale: the ``x * HardSigmoid(x)`` gate that ``passes.hardsigmoid_as_conv`` writes, a
squeeze-excite gate, a constant); and every Conv that reads the region is depthwise, so its
channel ``c`` weights are divided by ``k_c``. With per-channel weight scales that costs the
weights nothing: each channel's int8 grid scales with it. ``k_c`` is as large as lets every
channel of every region tensor stay inside that tensor's calibrated range: the tensor's scale
is unchanged and the quiet channels use more of its levels. Unlike cross-layer equalisation
(``equalize``, which evens weight ranges with no data), this needs the activation ranges, so
it runs on the calibration samples before calibration observes them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.node_index import NodeIndex, attributes, clip_bounds
from onnxquant.passes.prepare import default_opset
from onnxquant.recovery.probe import Probe, run_probe

# Ops through which a per-channel positive scale passes unchanged (f(x / s) = f(x) / s).
_PASS_THROUGH = {"Relu", "LeakyRelu", "Identity", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "GlobalMaxPool"}
# Ops whose output the quantized model never holds below zero: a tensor read only by them is
# quantized after them (fused), so its negative side sets no range.
_RECTIFIERS = {"Relu"}
# Magnification at most this: a channel nearly silent on the calibration samples may not be on
# others, and would then clip.
K_MAX = 16.0
# How far a region's tensors' ranges may be widened, below and above (see ``factors``).
_WIDEN = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


@dataclass
class Region:
    """A producing Conv, the tensors it scales, and the depthwise Convs that take the scale back."""

    producer: int
    tensors: list[str] = field(default_factory=list)
    absorbers: list[int] = field(default_factory=list)


@dataclass
class DepthwiseReport:
    regions: int = 0  # regions rescaled
    channels: int = 0  # channels magnified by more than 1%


def _shape(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """Recorded shapes: a dim's size, its symbolic name, or None."""
    shapes = {}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                     for d in t.shape.dim)
    return shapes


def _own(index: NodeIndex, names: Iterable[str]) -> bool:
    """Initializers read by this one node input only (rescaling them changes nothing else)."""
    return all(t in index.inits and index.uses(t) == 1 for t in names if t)


def _is_depthwise(node: onnx.NodeProto, index: NodeIndex, channels: int) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or not _own(index, node.input[1:3]):
        return False
    dims = index.inits[node.input[1]].dims
    return attributes(node).get("group", 1) == channels and len(dims) >= 3 and dims[1] == 1 and dims[0] % channels == 0


def _keeps_channels(other: str, scaled: str, index: NodeIndex, shapes: dict) -> bool:
    """Whether ``Mul(scaled, other)`` keeps ``scaled``'s channel axis as its own: ``other`` has no
    more dimensions (broadcasting aligns from the right, so the output has ``scaled``'s rank and
    its axis 1 is ``scaled``'s channels, whatever else broadcasts)."""
    rank = len(index.inits[other].dims) if other in index.inits else len(shapes[other]) if other in shapes else None
    mine = shapes.get(scaled)
    return rank is not None and mine is not None and rank <= len(mine)


def regions(model: onnx.ModelProto) -> list[Region]:
    """Every region whose readers are all depthwise Convs (and at least one reads it), of 2-D
    convolutions (NCHW tensors, as the range probe reads them)."""
    index = NodeIndex(model.graph)
    shapes = _shape(model)
    found = []
    for k, conv in enumerate(index.nodes):
        if conv.op_type != "Conv" or len(conv.input) < 2 or not _own(index, conv.input[1:3]):
            continue
        wdims = index.inits[conv.input[1]].dims
        if len(wdims) < 3:
            continue
        region = _grow(index, shapes, k, wdims[0])
        if region is not None and all(len(shapes.get(t, ())) == 4 for t in region.tensors):
            found.append(region)
    # two regions meeting at a Mul would each size their factors as if the other did not scale it
    seen: dict[str, int] = {}
    for region in found:
        for t in region.tensors:
            seen[t] = seen.get(t, 0) + 1
    return [r for r in found if all(seen[t] == 1 for t in r.tensors)]


def _grow(index: NodeIndex, shapes: dict, producer: int, channels: int) -> Region | None:
    """The region from ``producer``'s output, or None when something reads it that the scale
    cannot pass through or be taken back by."""
    region = Region(producer)
    todo = [index.nodes[producer].output[0]]
    scaled: set[str] = set()
    muls: list[int] = []
    while todo:
        t = todo.pop()
        if t in scaled:
            continue
        if t in index.outputs:
            return None
        scaled.add(t)
        region.tensors.append(t)
        for r in index.readers.get(t, []):
            node = index.nodes[r]
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                return None
            if op == "Conv" and node.input[0] == t and _is_depthwise(node, index, channels):
                if r not in region.absorbers:
                    region.absorbers.append(r)
                continue
            if op in _PASS_THROUGH or (op == "PRelu" and node.input[0] == t and node.input[1] in index.inits):
                pass
            elif op == "Clip":
                bounds = clip_bounds(node, index.inits)
                if node.input[0] != t or bounds is None or bounds[0] != 0.0 or bounds[1] not in (None, np.inf):
                    return None
            elif op == "Mul" and len(node.input) == 2 and node.input[0] != node.input[1]:
                other = node.input[1] if node.input[0] == t else node.input[0]
                if not _keeps_channels(other, t, index, shapes):
                    return None
                muls.append(r)
            else:
                return None
            todo.append(node.output[0])
    # a Mul scales its output once: its other operand must not be scaled too
    if any(len(set(index.nodes[r].input) & scaled) != 1 for r in muls) or not region.absorbers:
        return None
    return region


def _fits(lo: np.ndarray, hi: np.ndarray, top: float, bottom: float, upper_only: bool) -> np.ndarray:
    """Per channel, the largest factor that keeps ``[lo_c, hi_c]`` inside ``[bottom, top]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = np.where(hi > 0, top / hi, np.inf)
        if not upper_only:
            fit = np.minimum(fit, np.where(lo < 0, bottom / lo, np.inf))
    return fit


def _width(top: float, bottom: float, symmetric: bool) -> float:
    return 2 * max(top, -bottom) if symmetric else top - bottom


def factors(ranges: list[tuple[np.ndarray, np.ndarray, bool]], symmetric: bool = False) -> np.ndarray:
    """The channel factors for one region from its tensors' per-channel (min, max, upper only).

    Every channel that reaches a common floor (hard-swish's -0.375, SiLU's -0.28) would block its
    own magnification if the tensor's range could not grow; widening a tensor's range coarsens
    every channel's step. Each tensor's bounds are widened by the same pair of factors (below,
    above), and the pair with the least quantization noise summed over the region's tensors and
    channels, in the model's original units, is kept (no widening is one of the pairs).
    ``symmetric``: activations quantized symmetrically, whose step follows the larger bound.
    """
    best, chosen = np.inf, None
    for below in _WIDEN:
        for above in _WIDEN:
            fit = np.full(ranges[0][0].shape, K_MAX)
            widths = 0.0
            for lo, hi, upper_only in ranges:
                top, bottom = max(float(hi.max()), 0.0), min(float(lo.min()), 0.0)
                if upper_only:
                    bottom = 0.0
                width = _width(top, bottom, symmetric)
                top, bottom = top * above, bottom * below
                fit = np.minimum(fit, _fits(lo, hi, top, bottom, upper_only))
                widths += (_width(top, bottom, symmetric) / width) ** 2 if width > 0 else 1.0
            k = np.clip(np.where(np.isfinite(fit), fit, K_MAX), 1.0, K_MAX)
            cost = widths * float(np.mean(1.0 / k**2))
            if cost < best * (1 - 1e-9):
                best, chosen = cost, k
    return chosen


def _channel_ranges(model: onnx.ModelProto, tensors: list[str], samples: Iterable[dict[str, np.ndarray]],
                    max_samples: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (min, max) of each NCHW tensor over the samples."""
    opset = default_opset(model)
    probe = Probe(prefix="_oq_dw")
    keys: dict[str, tuple[str, str]] = {}
    for t in tensors:
        moved = probe.node("Transpose", [t], "t", perm=[1, 0, 2, 3])
        flat = probe.node("Flatten", [moved], "flat", axis=1)
        keys[t] = (probe.reduce("ReduceMin", flat, [1], opset), probe.reduce("ReduceMax", flat, [1], opset))
        probe.outputs.extend(keys[t])
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for values in run_probe(model, probe, samples, max_samples):
        for t, (lo_key, hi_key) in keys.items():
            lo, hi = values[lo_key].astype(np.float64), values[hi_key].astype(np.float64)
            if t in ranges:
                lo, hi = np.minimum(ranges[t][0], lo), np.maximum(ranges[t][1], hi)
            ranges[t] = (lo, hi)
    return ranges


def even_depthwise_inputs(model: onnx.ModelProto, samples: Iterable[dict[str, np.ndarray]],
                          max_samples: int | None = None, symmetric: bool = False) -> DepthwiseReport:
    """Magnify the quiet channels of every depthwise region of ``model``, in place."""
    found = regions(model)
    if not found:
        return DepthwiseReport()
    index = NodeIndex(model.graph)
    ranges = _channel_ranges(model, [t for r in found for t in r.tensors], samples, max_samples)
    report = DepthwiseReport()
    for region in found:
        per_tensor = []
        for t in region.tensors:
            readers = [index.nodes[r].op_type for r in index.readers.get(t, [])]
            per_tensor.append((*ranges[t], bool(readers) and all(op in _RECTIFIERS for op in readers)))
        k = factors(per_tensor, symmetric)
        if not np.any(k > 1.01):
            continue
        _rescale(index, region, k)
        report.regions += 1
        report.channels += int(np.sum(k > 1.01))
    return report


def _rescale(index: NodeIndex, region: Region, k: np.ndarray) -> None:
    """Producer channel ``c`` times ``k_c``; each absorber's channel ``c`` weights over ``k_c``."""
    def put(name: str, value: np.ndarray) -> None:
        index.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    producer = index.nodes[region.producer]
    w = tensor_array(index.inits[producer.input[1]]).astype(np.float64)
    put(producer.input[1], w * k.reshape((-1,) + (1,) * (w.ndim - 1)))
    if len(producer.input) > 2 and producer.input[2]:
        put(producer.input[2], tensor_array(index.inits[producer.input[2]]).astype(np.float64) * k)
    for a in region.absorbers:
        name = index.nodes[a].input[1]
        w = tensor_array(index.inits[name]).astype(np.float64)
        per_output = np.repeat(k, w.shape[0] // k.size)  # (a channel multiplier m: m outputs per channel)
        put(name, w / per_output.reshape((-1,) + (1,) * (w.ndim - 1)))
