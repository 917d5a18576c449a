"""Turn ``Constant`` nodes into initializers.

Many exporters (Paddle, older PyTorch, TF converters) store weights as Constant nodes; a
quantizer that only looks at initializers then sees no weights at all.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

_VALUE_ATTRS = {
    "value_float": lambda a: numpy_helper.from_array(__import__("numpy").array(a.f, "float32")),
    "value_int": lambda a: numpy_helper.from_array(__import__("numpy").array(a.i, "int64")),
    "value_floats": lambda a: numpy_helper.from_array(__import__("numpy").array(list(a.floats), "float32")),
    "value_ints": lambda a: numpy_helper.from_array(__import__("numpy").array(list(a.ints), "int64")),
}


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if attr.name in _VALUE_ATTRS:
            return _VALUE_ATTRS[attr.name](attr)
    return None  # sparse_value / string values: leave the node alone


def fold_constant_nodes(model: onnx.ModelProto) -> int:
    """Move main-graph Constant nodes to initializers in place; returns how many were folded."""
    graph = model.graph
    kept: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded
