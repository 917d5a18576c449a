"""Pass ``prelu_as_max``: ``PRelu(x, a)`` with constant slopes ``a <= 1`` becomes ``Max(x, x * a)``.

onnxruntime has no integer PRelu, so a PRelu between integer kernels stays a float op, and its
CPU kernel is slow: in MTCNN's O-Net (per-channel slopes, some negative) the four PRelu took
230 us of a 510 us int8 run, more than all its integer convolutions, against 97 us in fp32.
``Max(x, x * a)`` is the same function wherever every slope is at most 1 (x >= 0: x >= a x;
x < 0: a x >= x), and onnxruntime's Mul and Max are vectorised broadcasts: the O-Net's int8
run fell from 1.01x to 0.74x fp32's time (one thread, AMD EPYC with VNNI). Only float32
slopes held as initializers (or Constant nodes) are rewritten, in the main graph; the CPU
target only (QNN and OpenVINO run PRelu natively).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name


def _constant_slopes(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Float32 constants of the main graph by name (initializers and Constant nodes' values)."""
    found = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    found[node.output[0]] = attr.t
    return {name: tensor_array(tensor) for name, tensor in found.items()}


def prelu_as_max(model: onnx.ModelProto) -> int:
    """Rewrite every PRelu of constant slopes <= 1 in the main graph (in place); returns how many.

    The Max keeps the PRelu's name and output, so reports that name the PRelu still find it."""
    graph = model.graph
    slopes = _constant_slopes(graph)
    used = {n.name for n in graph.node} | {v for n in graph.node for v in (*n.input, *n.output)}
    used |= {i.name for i in graph.initializer}
    rewritten: dict[int, list[onnx.NodeProto]] = {}  # position in graph.node -> its replacement
    for position, node in enumerate(graph.node):
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        slope = slopes.get(node.input[1])
        if slope is None or slope.size == 0 or not np.all(np.isfinite(slope)) or np.any(slope > 1.0):
            continue
        scaled = fresh_name(used, f"{node.output[0]}_scaled")
        rewritten[position] = [
            helper.make_node("Mul", [node.input[0], node.input[1]], [scaled],
                             name=fresh_name(used, f"{node.name}_slope")),
            helper.make_node("Max", [node.input[0], scaled], [node.output[0]], name=node.name),
        ]
    if rewritten:
        nodes = [m for position, n in enumerate(graph.node) for m in rewritten.get(position, [n])]
        del graph.node[:]
        graph.node.extend(nodes)
    return len(rewritten)

