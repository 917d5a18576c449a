"""Estimate from layer shapes whether a quantized CNN's convolutions run slower than fp32.

On x86 CPUs without VNNI, onnxruntime's int8 convolution kernels are faster than fp32 for
pointwise layers with many channels, but slower for depthwise layers with few channels, for a
stem on 3 input channels, and for the hard-swish gates (a depthwise 1x1 Conv each in the integer
graph, a fused activation in fp32): their cost is dominated by per-call and per-pixel work (NHWC
indirection, requantizing each output), not by multiply-adds. A mobile network made of such
layers (the PP-OCR text-direction classifier: 8-200 channels on 2-24 rows) is slower as int8 by
construction, with every layer fused. This module says so before anything is measured: each
quantized Conv's time is estimated as ``const + a * pixels + b * outputs + c * multiply-adds``
with coefficients per kind (depthwise, pointwise, dense k x k), fp32 and int8, fitted to the
per-Conv kernel times onnxruntime's profiler gave inside five real models (one thread, batch 1
and 8; ``benchmarks/conv_profile.py``) on an AMD EPYC (AVX2, no VNNI) with onnxruntime 1.32.
A depthwise 1x1 Conv costs fp32 only its per-output work (a per-channel scale, fused into the
Conv before it). Only that CPU kind has figures; elsewhere nothing is estimated. Elementwise ops
(QLinearAdd/Mul, pooling) are not counted. Deterministic: no timing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import shape_inference

from onnxquant.ops.rules import is_depthwise


@dataclass(frozen=True)
class KindCost:
    """Nanoseconds per call, per output pixel, per output value and per multiply-add."""

    per_call: float
    per_pixel: float
    per_output: float
    per_mac: float

    def nanoseconds(self, layer: ConvShape) -> float:
        return self.per_call + self.per_pixel * layer.pixels + self.per_output * layer.outputs + self.per_mac * layer.macs


@dataclass(frozen=True)
class ConvCost:
    """One precision's costs on one CPU kind, per kind of Conv."""

    depthwise: KindCost
    pointwise: KindCost
    dense: KindCost  # k x k with k > 1, groups of more than one channel
    # a depthwise 1x1 Conv (a per-channel scale: the integer graph's hard-swish gates) costs only
    # this much per output value, where the kernel folds it (fp32: an activation fused into the Conv)
    folded_scale_per_output: float | None = None

    def nanoseconds(self, layer: ConvShape) -> float:
        if layer.depthwise and layer.kernel_area == 1 and self.folded_scale_per_output is not None:
            return self.folded_scale_per_output * layer.outputs
        if layer.depthwise:
            return self.depthwise.nanoseconds(layer)
        return (self.pointwise if layer.kernel_area == 1 else self.dense).nanoseconds(layer)


# Fitted (non-negative least squares, each layer weighted by 1/sqrt(its time); int8's per-call
# cost held at fp32's, as layers of one pixel measured alike in both) to 437 Convs timed
# by onnxruntime's profiler inside the PP-OCR v2 classifier (batch 1 and 8), the PP-OCRv5
# text-line classifier (batch 1 and 8), MTCNN's O-Net, EfficientNet-Lite0 and the PP-OCRv5
# detector, at one thread. Per model, the Convs' int8/fp32 time estimated against measured:
# the two classifiers 1.42 / 1.88-2.04 (batch 8: 1.49 / 1.85), O-Net 1.01 / 1.23,
# EfficientNet-Lite0 0.79 / 0.70, the PP-OCRv4 and v5 detectors 0.97 / 0.52-1.00 (noisy).
COSTS: dict[str, tuple[ConvCost, ConvCost]] = {  # CPU kind -> (fp32, int8)
    "avx2": (
        ConvCost(depthwise=KindCost(3538.0, 0.0, 0.392, 0.0192), pointwise=KindCost(5479.0, 0.114, 0.2125, 0.0220),
                 dense=KindCost(0.0, 5.564, 0.0, 0.0291), folded_scale_per_output=0.12),
        ConvCost(depthwise=KindCost(3538.0, 9.439, 0.2135, 0.0577), pointwise=KindCost(5479.0, 5.677, 0.1626, 0.0109),
                 dense=KindCost(0.0, 23.40, 0.5865, 0.0211)),
    ),
    # AMD EPYC (family 26, AVX512-VNNI), full 8-bit weights, onnxruntime 1.32: 212 Convs (and 54 gates) of
    # EfficientNet-Lite0, MTCNN's O-Net, the PP-OCR v2 classifier (batch 1 and 8) and the PP-OCRv5
    # text-line classifier, fitted by ``benchmarks/conv_fit.py`` (int8's per-call cost its own).
    # Convs' int8/fp32 measured / estimated: 0.53 / 0.62, 0.72 / 0.82, 1.37 / 1.17 (batch 8: 1.32 /
    # 1.02), 1.75 / 1.17. The gates' fp32 cost (folded into their Conv) is x86-without-VNNI's.
    "vnni": (
        ConvCost(depthwise=KindCost(1824.0, 0.0, 0.2006, 0.01048), pointwise=KindCost(3523.0, 2.207, 0.1116, 0.009511),
                 dense=KindCost(0.0, 12.16, 0.0, 0.006938), folded_scale_per_output=0.12),
        ConvCost(depthwise=KindCost(4241.0, 5.471, 0.1346, 0.02563), pointwise=KindCost(4801.0, 3.348, 0.01006, 0.002909),
                 dense=KindCost(3646.0, 15.07, 0.3624, 0.0005922)),
    ),
}


@dataclass(frozen=True)
class ConvShape:
    """One Conv's work for one sample."""

    name: str
    pixels: int  # output positions
    outputs: int  # output values (pixels x channels)
    macs: int
    depthwise: bool
    kernel_area: int = 1  # kernel height x width


@dataclass(frozen=True)
class ConvEstimate:
    """Estimated time of the quantized Convs, fp32 and int8, for one sample."""

    layers: int
    fp32_us: float
    int8_us: float
    slower: tuple[str, ...]  # layers estimated slower as int8, graph order
    cpu_kind: str = "avx2"
    # the estimated Convs' share of the model's 8-bit (or 4-bit) weight elements: the estimate
    # speaks for the whole model only where the Convs hold most of what runs as integer kernels
    weight_share: float = 1.0

    @property
    def ratio(self) -> float:
        return self.int8_us / self.fp32_us if self.fp32_us > 0 else 1.0


def _fixed_shape_copy(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The graph with its inputs fixed to ``shapes`` and no recorded value_info; large
    initializers keep their dims and type but not their data (shape inference needs no more)."""
    graph = onnx.GraphProto()
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    for inp in model.graph.input:
        copy = graph.input.add()
        copy.CopyFrom(inp)
        if inp.name in shapes and copy.type.HasField("tensor_type"):
            dims = copy.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[inp.name]:
                dims.add().dim_value = int(size)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or int(np.prod(init.dims, dtype=np.int64)) > 64:
            light = graph.initializer.add()
            light.name, light.data_type = init.name, init.data_type
            light.dims.extend(init.dims)
        else:
            graph.initializer.add().CopyFrom(init)
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(graph)
    return out


def known_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """Every value's shape that shape inference fully knows for inputs of ``shapes``."""
    inferred = shape_inference.infer_shapes(_fixed_shape_copy(model, shapes))
    known = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            known[info.name] = [d.dim_value for d in dims]
    return known


def quantized_conv_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                          planned: set[str] | None = None,
                          known: dict[str, list[int]] | None = None) -> list[ConvShape]:
    """Every Conv whose weight comes through a DequantizeLinear (or, in a float model, every Conv
    named in ``planned`` with a weight initializer), with its work for inputs of ``shapes``
    (layers whose output shape inference cannot tell are left out). ``known``: ``known_shapes``
    of the same model and ``shapes``, where the caller has them."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        if planned is not None:
            if node.name in planned and node.input[1] in inits:
                convs.append((node, list(inits[node.input[1]].dims)))
            continue
        dq = producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            convs.append((node, list(inits[dq.input[0]].dims)))
    if not convs:
        return []
    known = known if known is not None else known_shapes(model, shapes)
    out = []
    for node, weight in convs:
        shape = known.get(node.output[0])
        if shape is None or len(shape) < 3 or len(weight) < 3:
            continue
        pixels = int(np.prod(shape[2:])) * shape[0]
        outputs = pixels * shape[1]
        out.append(ConvShape(node.name, pixels, outputs, outputs * int(np.prod(weight[1:])),
                             depthwise=is_depthwise(node, tuple(weight)), kernel_area=int(np.prod(weight[2:]))))
    return out


def estimate(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], cpu_kind: str,
             planned: set[str] | None = None, known: dict[str, list[int]] | None = None) -> ConvEstimate | None:
    """The quantized Convs' estimated time in fp32 and int8 on ``cpu_kind``; None where this
    kind has no figures or the model has no quantized Conv of known shape. ``planned``: the
    float model's layers planned for quantization (the model has no DequantizeLinear yet).
    ``known``: ``known_shapes`` of the same model and ``shapes``, where the caller has them."""
    costs = COSTS.get(cpu_kind)
    if costs is None:
        return None
    layers = quantized_conv_shapes(model, shapes, planned, known)
    if not layers:
        return None
    times = layer_times(layers, cpu_kind)
    return ConvEstimate(len(layers), sum(t[1] for t in times) / 1e3, sum(t[2] for t in times) / 1e3,
                        tuple(name for name, f, i in times if i > f), cpu_kind,
                        layer_weight_share(model, {layer.name for layer in layers}, planned))


def layer_times(layers: list[ConvShape], cpu_kind: str) -> list[tuple[str, float, float]]:
    """Each layer's name and estimated fp32 and int8 time in nanoseconds on ``cpu_kind`` (which
    must have figures)."""
    fp32, int8 = COSTS[cpu_kind]
    return [(layer.name, fp32.nanoseconds(layer), int8.nanoseconds(layer)) for layer in layers]


_LOW_BIT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_RECURRENT = {"LSTM", "GRU", "RNN"}


def layer_weight_share(model: onnx.ModelProto, convs: set[str], planned: set[str] | None) -> float:
    """Elements of the named layers' (``convs``') weights over those of every low-bit initializer
    (zero points included), or, in a float model, over those of every ``planned`` layer's weights
    (input 1, and a recurrent layer's recurrence weights, input 2)."""
    if planned is not None:
        sizes = {i.name: int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer}
        weights = {name: n.name for n in model.graph.node if n.name in planned
                   for name in n.input[1:3 if n.op_type in _RECURRENT else 2]}
        total = sum(sizes.get(w, 0) for w in weights)
        ours = sum(sizes.get(w, 0) for w, node in weights.items() if node in convs)
        return ours / total if total else 1.0
    sizes = {i.name: int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer if i.data_type in _LOW_BIT}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv_weights = set()
    for node in model.graph.node:
        if node.name in convs and len(node.input) > 1 and node.input[1] in producer:
            conv_weights.add(producer[node.input[1]].input[0])
    total = sum(sizes.values())
    return sum(sizes.get(name, 0) for name in conv_weights) / total if total else 1.0
