"""Walking a model's graphs and the tensors they hold, with no other dependency than onnx
(model_io and outputs both need it; neither imports the other for it)."""
from __future__ import annotations

import onnx


def iter_graphs(graph: onnx.GraphProto):
    """``graph`` and every graph nested in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def iter_tensors(model: onnx.ModelProto):
    """Every TensorProto that can hold weights: initializers and Constant/attribute tensors."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
