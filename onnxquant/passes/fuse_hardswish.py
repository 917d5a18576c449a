"""Rewrite hard-swish spelled as ``x * clip(x + 3, 0, 6) / 6`` into one op.

Paddle and older PyTorch exporters spell hard-swish as four elementwise ops, each a full pass
over the activation. ``HardSwish`` (opset 14) or ``x * HardSigmoid(x)`` (any opset) computes
the same function in one or two passes, which matters most in a quantized model, where these
float ops sit between integer kernels. (onnxruntime itself runs HardSwish as HardSigmoid and
Mul, so upgrading a model's opset just for HardSwish buys nothing.)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxquant.passes.node_index import NodeIndex, clip_bounds, scalar


def _const_operand(node: onnx.NodeProto, inits: dict) -> tuple[str, float] | None:
    if len(node.input) != 2:
        return None
    a, b = node.input
    if scalar(inits, b) is not None and a not in inits:
        return a, scalar(inits, b)  # type: ignore[return-value]
    if scalar(inits, a) is not None and b not in inits and node.op_type in ("Add", "Mul"):
        return b, scalar(inits, a)  # type: ignore[return-value]
    return None


def _clip_bounds(node: onnx.NodeProto, inits: dict) -> tuple[float, float] | None:
    bounds = clip_bounds(node, inits)
    return None if bounds is None or None in bounds else bounds  # type: ignore[return-value]


def _matches(graph: onnx.GraphProto):
    """Yield (x, [add, clip, mul, div] node positions) for every ``x * clip(x + 3, 0, 6) / 6``.

    Positions, not Python objects: protobuf wrappers are not stable identities.
    """
    index = NodeIndex(graph)
    nodes, inits, single = index.nodes, index.inits, index.only_reader

    for a, add in enumerate(nodes):
        if add.op_type != "Add":
            continue
        operand = _const_operand(add, inits)
        if operand is None or not np.isclose(operand[1], 3.0):
            continue
        x = operand[0]
        c = single(add.output[0], "Clip")
        bounds = _clip_bounds(nodes[c], inits) if c is not None else None
        if bounds is None or not np.allclose(bounds, (0.0, 6.0)):
            continue
        m = single(nodes[c].output[0], "Mul")
        if m is None or set(nodes[m].input) != {x, nodes[c].output[0]}:
            continue
        d = single(nodes[m].output[0], "Div")
        if d is None:
            continue
        div = nodes[d]
        if div.input[0] != nodes[m].output[0] or scalar(inits, div.input[1]) is None \
                or not np.isclose(scalar(inits, div.input[1]), 6.0):
            continue
        yield x, (a, c, m, d)


def fuse_hardswish(model: onnx.ModelProto, opset: int) -> int:
    """Rewrite in place; returns how many hard-swish patterns were fused."""
    graph = model.graph
    nodes = list(graph.node)
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for x, (a, c, m, d) in list(_matches(graph)):
        name, out = nodes[a].name or f"hardswish_{a}", nodes[d].output[0]
        if opset >= 14:
            new = [helper.make_node("HardSwish", [x], [out], name=f"{name}_HardSwish")]
        else:
            gate = f"{name}_hardsigmoid"
            new = [
                helper.make_node("HardSigmoid", [x], [gate], name=f"{name}_HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
                helper.make_node("Mul", [x, gate], [out], name=f"{name}_HardSwish"),
            ]
        replace[a] = new
        drop.update({c, m, d})
    if replace:
        outputs = {o.name for o in graph.output}
        kept_nodes = []
        for k, node in enumerate(nodes):
            if k in drop:
                continue
            kept_nodes.extend(replace.get(k, [node]))
        kept_nodes = [_copy(n) for n in kept_nodes]
        del graph.node[:]
        graph.node.extend(kept_nodes)
        used = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name in used or i.name in outputs]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return len(replace)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    """Detached copy: clearing the graph's node list must not invalidate what we re-insert."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
