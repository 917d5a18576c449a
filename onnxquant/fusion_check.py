"""Ask onnxruntime which quantized layers really became integer kernels.

A weighted layer written as ``DQ(weight) -> Conv/Gemm/MatMul`` is fast only when onnxruntime's
QDQ fusions turn it into QLinearConv, QGemm, MatMulIntegerToFloat... When a fusion rule does
not match (a bias shape, an attribute, a missing Q), the layer runs in float *and* every call
dequantizes its weight: slower than the fp32 model, silently. onnxruntime writes the graph it
will run (``optimized_model_filepath``); a quantized weight that still reaches a
DequantizeLinear there belongs to such a float island. Deterministic: no timing.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxquant.ops import WEIGHTED_OPS

_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class FusionCheck:
    """How many quantized weighted layers onnxruntime's CPU provider runs as integer kernels."""

    quantized_layers: int
    integer_layers: int
    float_islands: list[str] = field(default_factory=list)  # layer (node) names, graph order

    def summary(self) -> str:
        return f"{self.integer_layers} of {self.quantized_layers} quantized layers run as integer kernels"

    def to_dict(self) -> dict[str, Any]:
        return {"quantized_layers": self.quantized_layers, "integer_layers": self.integer_layers,
                "float_islands": list(self.float_islands)}


def quantized_weights(model: onnx.ModelProto) -> dict[str, str]:
    """Quantized weight initializer -> the weighted layer (node name) it feeds through a DequantizeLinear."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    dq_source = {n.output[0]: n.input[0] for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits
                 and inits[n.input[0]].data_type in _INTEGER_TYPES}
    layers: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            source = dq_source.get(node.input[1])
            if source is not None:
                layers.setdefault(source, node.name)
    return layers


def optimized_graph(model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs (extended optimizations: the QDQ fusions, no layout change)."""
    import onnxruntime as ort

    payload = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="onnxquant-fusion-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        return onnx.load_model(str(out), load_external_data=False)


def check_fusion(model: onnx.ModelProto, payload: bytes | None = None, only: set[str] | None = None) -> FusionCheck:
    """Which of ``model``'s quantized weighted layers onnxruntime fuses into integer kernels.

    ``payload``: ``model`` already serialized (spares one serialization). ``only``: the layers
    to count (those this run quantized; an input's own QDQ layers are not ours to re-plan).
    """
    layers = {w: n for w, n in quantized_weights(model).items() if only is None or n in only}
    if not layers:
        return FusionCheck(0, 0)
    optimized = optimized_graph(payload if payload is not None else model)
    still_dequantized = {n.input[0] for n in optimized.graph.node if n.op_type == "DequantizeLinear" and n.input}
    order = {n.name: k for k, n in enumerate(model.graph.node)}
    islands = sorted({layer for weight, layer in layers.items() if weight in still_dequantized}, key=order.get)
    total = len(set(layers.values()))
    return FusionCheck(total, total - len(islands), islands)
