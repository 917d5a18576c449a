"""Write each quantized ``Attention`` as onnxruntime's ``QAttention``.

onnxruntime's CPU provider has QDQ fusions for Conv, MatMul, Gemm and elementwise ops, none for
its own ``com.microsoft.Attention``: written as ``DQ(x) -> Attention <- DQ(W)`` it would run in
float and dequantize its weight on every call. ``QAttention`` takes the uint8 input and the int8
weight with their scales and zero points (per column of the packed Q/K/V weight) and runs the
projections as one integer GEMM; the attention itself (scores, mask, Softmax) stays float, as in
``Attention``. The input's scale is the calibrated one the plan gave the Q/DQ pair.
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnxquant.passes.node_index import NodeIndex

MS_DOMAIN = "com.microsoft"


def _dequantized(index: NodeIndex, name: str) -> onnx.NodeProto | None:
    """The DequantizeLinear (with a stored zero point) that produces ``name``."""
    k = index.producer.get(name)
    node = index.nodes[k] if k is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
        return None
    return node


def write_qattention(graph: onnx.GraphProto) -> int:
    """Replace ``DQ(x) -> Attention <- DQ(W)`` by ``QAttention`` in ``graph``; return how many."""
    index = NodeIndex(graph)
    replaced: dict[int, onnx.NodeProto] = {}
    bypassed: set[str] = set()  # DequantizeLinear nodes the QAttention now reads around
    for k, node in enumerate(index.nodes):
        if node.op_type != "Attention" or node.domain != MS_DOMAIN or len(node.input) < 3:
            continue
        x_dq, w_dq = _dequantized(index, node.input[0]), _dequantized(index, node.input[1])
        if x_dq is None or w_dq is None or w_dq.input[0] not in index.inits:
            continue
        mask = node.input[3] if len(node.input) > 3 else ""
        inputs = [x_dq.input[0], w_dq.input[0], node.input[2], x_dq.input[1], w_dq.input[1], mask,
                  x_dq.input[2], w_dq.input[2]]
        replaced[k] = helper.make_node("QAttention", inputs, list(node.output), name=node.name, domain=MS_DOMAIN)
        replaced[k].attribute.extend(node.attribute)
        bypassed.update((x_dq.name, w_dq.name))
    if not replaced:
        return 0
    nodes = [replaced.get(k, n) for k, n in enumerate(index.nodes)]
    read = {i for n in nodes for i in n.input} | index.outputs
    nodes = [n for n in nodes if n.name not in bypassed or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)
