"""Positions of a graph's nodes by the tensors they read and write, for pattern-matching passes.

Positions, not Python objects: protobuf wrappers are not stable identities.
"""
from __future__ import annotations

import onnx


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

    def only_reader(self, tensor: str, op: str) -> int | None:
        """The position of the one ``op`` node that reads ``tensor``, if nothing else does."""
        found = self.readers.get(tensor, [])
        if len(found) == 1 and self.nodes[found[0]].op_type == op and tensor not in self.outputs:
            return found[0]
        return None
