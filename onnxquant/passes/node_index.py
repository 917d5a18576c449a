"""Positions of a graph's nodes by the tensors they read and write, for pattern-matching passes.

Positions, not Python objects: protobuf wrappers are not stable identities.
"""
from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

from onnxquant.model_io import tensor_array


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values, by name."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    """The value of a one-element initializer, else None."""
    init = inits.get(name)
    if init is None:
        return None
    value = tensor_array(init)
    return float(value.reshape(())) if value.size == 1 else None


def clip_bounds(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[float | None, float | None] | None:
    """A Clip's (min, max) from its inputs (opset 11+) or attributes; None for an absent bound,
    and None overall when a bound is given but is not a constant scalar."""
    attrs = attributes(node)
    bounds: list[float | None] = [attrs.get("min"), attrs.get("max")]
    for k, name in enumerate(node.input[1:3]):
        if name:
            bounds[k] = scalar(inits, name)
            if bounds[k] is None:
                return None
    lo, hi = (None if b is None else float(b) for b in bounds)
    return lo, hi


class NodeIndex:
    """Who writes and who reads each tensor, as positions in ``graph.node`` (taken once)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer = {o: k for k, n in enumerate(self.nodes) for o in n.output}
        self.readers: dict[str, list[int]] = {}
        for k, node in enumerate(self.nodes):
            for name in node.input:
                self.readers.setdefault(name, []).append(k)

    def uses(self, tensor: str) -> int:
        """How many node inputs read ``tensor`` (a node reading it twice counts twice)."""
        return len(self.readers.get(tensor, []))

    def only_reader(self, tensor: str, op: str | None = None) -> int | None:
        """The position of the one node (of type ``op``, if given) that reads ``tensor``, if
        nothing else does and it is not a graph output."""
        found = self.readers.get(tensor, [])
        if (len(found) == 1 and (op is None or self.nodes[found[0]].op_type == op)
                and tensor not in self.outputs):
            return found[0]
        return None
