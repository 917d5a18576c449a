"""Recognise layers that are already compressed: QDQ weights, QOperator kernels, MatMulNBits.

Such a model's float remainder can still be quantized; when none is left, quantizing again would
write the same model back ("0 nodes, 1.00x smaller"), which is a mistake the user should hear
about in one line, not a success.
"""
from __future__ import annotations

from collections import Counter

import onnx

from onnxquant.model_io import iter_graphs
from onnxquant.ops import WEIGHTED_OPS

# Integer kernels written by onnxruntime.quantization (QOperator format), dynamic quantization
# and weight-only 4-bit quantization (any domain: ai.onnx or com.microsoft).
QOPERATOR_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearConvTranspose",
    "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization",
    "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized", "QMoE",
})
_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT32}


def compressed_layers(model: onnx.ModelProto) -> Counter[str]:
    """op type -> how many layers are already quantized (QDQ layers count as ``QDQ <op>``)."""
    found: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        integer = {i.name for i in graph.initializer if i.data_type in _INTEGER_TYPES}
        dequantized = {n.output[0] for n in graph.node
                       if n.op_type == "DequantizeLinear" and n.input and n.input[0] in integer}
        for node in graph.node:
            if node.op_type in QOPERATOR_OPS:
                found[node.op_type] += 1
            elif node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in dequantized:
                found[f"QDQ {node.op_type}"] += 1
    return found


def describe(found: Counter[str]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(found.items()))
