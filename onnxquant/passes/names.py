"""Fresh tensor and node names: the one rule every rewrite uses, so generated names read alike."""
from __future__ import annotations

import onnx

from onnxquant.graphs import iter_graphs


# The doc_string of a weighted node a rewrite inserts where the input had no layer (a gate's or an
# affine's depthwise Conv): ``inspect`` tells such layers apart, so a user comparing layer counts
# with the input model is not misled. (The input's own doc_strings are cleared: node_annotations.)
INSERTED_DOC = "inserted by onnxquant"


def inserted(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node``, marked as a layer onnxquant inserted (``INSERTED_DOC``)."""
    node.doc_string = INSERTED_DOC
    return node


def fresh_name(used: set[str], base: str) -> str:
    """``base``, else ``base_2``, ``base_3``...: the first not in ``used``; it is added to ``used``."""
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def names_in_use(graph: onnx.GraphProto) -> set[str]:
    """Every name ``graph`` and the If/Loop/Scan bodies nested in it use (nodes, initializers,
    values, the graph's inputs and outputs): a name a pass adds must be new in the bodies too."""
    used = {v.name for v in (*graph.input, *graph.output)}
    for g in iter_graphs(graph):
        used |= {n.name for n in g.node} | {i.name for i in g.initializer}
        used |= {v for n in g.node for v in (*n.input, *n.output)}
    return used
