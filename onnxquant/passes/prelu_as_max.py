"""Pass ``prelu_as_max``: ``PRelu(x, a)`` with constant slopes ``a <= 1`` becomes ``Max(x, x * a)``.

onnxruntime has no integer PRelu, so a PRelu between integer kernels stays a float op, and its
CPU kernel is slow: in MTCNN's O-Net (per-channel slopes, some negative) the four PRelu took
230 us of a 510 us int8 run, more than all its integer convolutions, against 97 us in fp32.
``Max(x, x * a)`` gives the same values wherever every slope is at most 1 (x >= 0: x >= a x;
x < 0: a x >= x; a zero may change its sign), and onnxruntime's Mul and Max are vectorised
broadcasts: the O-Net's int8 run fell from 0.90x to 0.65x fp32's time (one thread, AMD EPYC
with VNNI). Only float32 slopes held as initializers (or Constant nodes) are rewritten, none of
them 0 (0 * inf is NaN) and not a slope per element (a float weight, which reports name by its
PRelu), in the main graph; the CPU target only (QNN and OpenVINO run PRelu natively). A PRelu
the user excluded (``--exclude op:PRelu``, or its name) stays a PRelu: excluding it means "keep
this layer as it is".
"""
from __future__ import annotations

from collections.abc import Container

import numpy as np
import onnx
from onnx import helper

from onnxquant.float_weights import is_float_weight
from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name, names_in_use


def _constant_slopes(graph: onnx.GraphProto, names: set[str]) -> dict[str, onnx.TensorProto]:
    """The float32 constants among ``names`` (initializers and Constant nodes' values)."""
    found = {i.name: i for i in graph.initializer if i.name in names and i.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    found[node.output[0]] = attr.t
    return found


def prelu_as_max(model: onnx.ModelProto, keep: Container[str] = ()) -> int:
    """Rewrite every PRelu of constant slopes <= 1 in the main graph (in place), except the ones
    named in ``keep``; returns how many.

    The Max keeps the PRelu's name and output, so reports that name the PRelu still find it."""
    graph = model.graph
    prelus = [n for n in graph.node if n.op_type == "PRelu" and n.domain in ("", "ai.onnx") and len(n.input) == 2]
    if not prelus:
        return 0
    slopes = _constant_slopes(graph, {n.input[1] for n in prelus})
    used = names_in_use(graph)
    rewritten: dict[int, list[onnx.NodeProto]] = {}  # position in graph.node -> its replacement
    for position, node in enumerate(graph.node):
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or node.name in keep:
            continue
        tensor = slopes.get(node.input[1])
        if tensor is None or is_float_weight(tensor):
            continue  # (a slope per element is a float weight: reports name the PRelu that reads it)
        slope = tensor_array(tensor)
        # a zero slope would turn x = +inf into Max(inf, 0 * inf) = NaN
        if slope.size == 0 or not np.all(np.isfinite(slope)) or np.any(slope > 1.0) or np.any(slope == 0.0):
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

