"""Estimate from layer shapes whether a quantized network's MatMul/Gemm layers run slower than fp32.

onnxruntime's int8 MatMul costs a fixed amount more per call than fp32's (quantizing its input,
requantizing or rescaling its output: about 1.1 us a layer on x86 without VNNI), and saves per
weight element read (1 byte against 4) and per multiply-add. A small network (a scikit-learn MLP
on a few features, 15 us in fp32) is therefore slower as int8 with every layer fused: chains of 3
MatMul + Add + Relu layers, one thread, measured int8/fp32 1.32 at width 16, 1.14 at 128 (batch 1),
0.80 at 256, 0.32 at 1024 (AMD EPYC, AVX2 without VNNI, onnxruntime 1.32; README, "Not yet done");
with VNNI (full 8-bit weights) 1.35 at 16, 1.03 at 256, 0.41 at 1024: the per-call cost is there too.
Each layer's time is estimated as ``per_call + per_weight * weight elements + per_mac *
multiply-adds``, fitted to those chains (``benchmarks/dense_chains.py``) per CPU kind; ARM64 has
no figures. Deterministic: no timing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant.conv_cost import known_shapes, layer_weight_share


@dataclass(frozen=True)
class DenseCost:
    """Nanoseconds per call, per weight element and per multiply-add."""

    per_call: float
    per_weight: float
    per_mac: float

    def nanoseconds(self, layer: DenseShape) -> float:
        return self.per_call + self.per_weight * layer.weights + self.per_mac * layer.macs


# (fp32, int8) per CPU kind. fp32's per-call cost is left out: it is in both, and only the
# difference is told.
COSTS: dict[str, tuple[DenseCost, DenseCost]] = {
    "avx2": (DenseCost(0.0, 0.065, 0.0203), DenseCost(1100.0, 0.0136, 0.0102)),
    # AMD EPYC (family 26, AVX512-VNNI), onnxruntime 1.32, full 8-bit weights: the same chains
    # (benchmarks/dense_chains.py, widths 16-1024, batch 1 and 8) measured int8/fp32 1.35 at
    # width 16, 1.35 at 128, 1.03 at 256, 0.41 at 1024 (batch 1); fitted by non-negative least squares
    "vnni": (DenseCost(0.0, 0.0374, 0.0066), DenseCost(830.0, 0.0141, 0.0020)),
}


@dataclass(frozen=True)
class DenseShape:
    """One MatMul/Gemm layer's work for one sample."""

    name: str
    weights: int  # weight elements
    macs: int


@dataclass(frozen=True)
class DenseEstimate:
    """Estimated extra time of the quantized MatMul/Gemm layers as int8, for one sample."""

    layers: int
    extra_us: float  # int8 minus fp32 (negative: int8 faster)
    macs: int
    cpu_kind: str = "avx2"
    # the layers' share of the planned layers' weight elements (``conv_cost.ConvEstimate``'s)
    weight_share: float = 1.0


def quantized_dense_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                           planned: set[str] | None = None,
                           known: dict[str, list[int]] | None = None) -> list[DenseShape]:
    """Every MatMul/Gemm of the main graph whose 2-D weight comes through a DequantizeLinear of an
    initializer (or, in a float model, every MatMul/Gemm named in ``planned`` with a 2-D weight
    initializer), with its work for inputs of ``shapes`` (layers of unknown output shape left out).
    ``known``: ``known_shapes`` of the same model and ``shapes``, where the caller has them."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if planned is not None:
            weight = list(inits[node.input[1]].dims) if node.name in planned and node.input[1] in inits else []
        else:
            dq = producer.get(node.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            weight = list(inits[dq.input[0]].dims)
        if len(weight) == 2:
            layers.append((node, weight))
    if not layers:
        return []
    known = known if known is not None else known_shapes(model, shapes)
    table_rows = _table_rows(model, shapes)
    out = []
    for node, weight in layers:
        shape = known.get(node.output[0])
        if shape:
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        elif table_rows is not None:
            rows = table_rows
        else:
            continue
        elements = int(np.prod(weight))
        out.append(DenseShape(node.name, elements, rows * elements))
    return out


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _table_rows(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """A table's rows, for layers past an op shape inference has no function for (a converted
    scikit-learn pipeline's ai.onnx.ml Scaler before its MLP): the model's one input, float and
    of shape (rows, features). Not token ids: an integer input's rows are not the MatMuls' rows."""
    if len(shapes) != 1:
        return None
    name, only = next(iter(shapes.items()))
    declared = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    if len(only) != 2 or declared.get(name) not in _FLOAT_TYPES:
        return None
    return int(only[0])


def estimate(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], cpu_kind: str,
             planned: set[str] | None = None, known: dict[str, list[int]] | None = None) -> DenseEstimate | None:
    """The quantized MatMul/Gemm layers' estimated extra time as int8 on ``cpu_kind``; None where
    this kind has no figures or there is no such layer of known shape. ``planned``: the float
    model's layers planned for quantization (the model has no DequantizeLinear yet); ``known``
    as for ``quantized_dense_shapes``."""
    costs = COSTS.get(cpu_kind)
    if costs is None:
        return None
    layers = quantized_dense_shapes(model, shapes, planned, known)
    if not layers:
        return None
    fp32, int8 = costs
    extra = sum(int8.nanoseconds(layer) - fp32.nanoseconds(layer) for layer in layers)
    return DenseEstimate(len(layers), extra / 1e3, sum(layer.macs for layer in layers), cpu_kind,
                         layer_weight_share(model, {layer.name for layer in layers}, planned))
