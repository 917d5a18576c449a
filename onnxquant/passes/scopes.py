"""Every node of a model with a stable qualified name and the chain of graphs it can see.

Nodes inside If/Loop/Scan bodies are named ``<outer node>/<attribute>/<node>`` (``/k`` after
the attribute for a list of graphs), unnamed nodes ``<op>_<index>``: the same model always
gives the same names, so a plan made on one copy of a model finds its nodes in another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import onnx


@dataclass
class ScopedNode:
    qualified: str
    node: onnx.NodeProto
    graph_path: str  # "" for the main graph, else the qualified prefix of the body
    scopes: list[tuple[str, onnx.GraphProto]]  # (path, graph) from the main graph to this node's graph

    @property
    def in_body(self) -> bool:
        return bool(self.graph_path)


def _local_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def iter_scoped_nodes(graph: onnx.GraphProto, path: str = "",
                      scopes: list[tuple[str, onnx.GraphProto]] | None = None) -> Iterator[ScopedNode]:
    """Depth first: a node, then the nodes of its bodies."""
    scopes = [*(scopes or []), (path, graph)]
    for index, node in enumerate(graph.node):
        local = _local_name(node, index)
        qualified = f"{path}/{local}" if path else local
        yield ScopedNode(qualified, node, path, scopes)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_scoped_nodes(attr.g, f"{qualified}/{attr.name}", scopes)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for k, body in enumerate(attr.graphs):
                    yield from iter_scoped_nodes(body, f"{qualified}/{attr.name}/{k}", scopes)


def iter_bodies(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.GraphProto, list[onnx.GraphProto]]]:
    """(path, body, enclosing graphs from ``graph`` down) for every If/Loop/Scan body, outer first;
    a body's path is its node's qualified name and the attribute (``/k`` for a list of graphs)."""
    for scoped in iter_scoped_nodes(graph):
        enclosing = [g for _, g in scoped.scopes]
        for attr in scoped.node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield f"{scoped.qualified}/{attr.name}", attr.g, enclosing
            for k, body in enumerate(attr.graphs):
                yield f"{scoped.qualified}/{attr.name}/{k}", body, enclosing


def name_body_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes inside bodies the name their qualified name already uses."""
    for scoped in iter_scoped_nodes(graph):
        if scoped.in_body and not scoped.node.name:
            scoped.node.name = scoped.qualified.rsplit("/", 1)[1]
