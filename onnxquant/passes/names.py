"""Fresh tensor and node names: the one rule every rewrite uses, so generated names read alike."""
from __future__ import annotations

import onnx

from onnxquant.graphs import iter_graphs


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
