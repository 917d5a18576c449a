"""Rewrite hard-swish spelled as ``x * clip(x + 3, 0, 6) / 6`` into one op.

Paddle and older PyTorch exporters spell hard-swish as four elementwise ops, each a full pass
over the activation. ``HardSwish`` (opset 14) or ``x * HardSigmoid(x)`` (any opset) computes
the same function in one or two passes, which matters most in a quantized model, where these
float ops sit between integer kernels.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _scalar(graph_inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    init = graph_inits.get(name)
    if init is None:
        return None
    value = numpy_helper.to_array(init)
    return float(value.reshape(())) if value.size == 1 else None


def _const_operand(node: onnx.NodeProto, inits: dict) -> tuple[str, float] | None:
    if len(node.input) != 2:
        return None
    a, b = node.input
    if _scalar(inits, b) is not None and a not in inits:
        return a, _scalar(inits, b)  # type: ignore[return-value]
    if _scalar(inits, a) is not None and b not in inits and node.op_type in ("Add", "Mul"):
        return b, _scalar(inits, a)  # type: ignore[return-value]
    return None


def _clip_bounds(node: onnx.NodeProto, inits: dict) -> tuple[float, float] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) >= 3 and node.input[1] and node.input[2]:
        lo, hi = _scalar(inits, node.input[1]), _scalar(inits, node.input[2])
        return None if lo is None or hi is None else (lo, hi)
    if "min" in attrs and "max" in attrs:
        return float(attrs["min"]), float(attrs["max"])
    return None


def fuse_hardswish(model: onnx.ModelProto, opset: int) -> int:
    """Rewrite in place; returns how many hard-swish patterns were fused."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def single(tensor: str, op: str) -> onnx.NodeProto | None:
        readers = consumers.get(tensor, [])
        if len(readers) == 1 and readers[0].op_type == op and tensor not in outputs:
            return readers[0]
        return None

    fused = 0
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for add in graph.node:
        if add.op_type != "Add" or id(add) in drop:
            continue
        operand = _const_operand(add, inits)
        if operand is None or not np.isclose(operand[1], 3.0):
            continue
        x = operand[0]
        clip = single(add.output[0], "Clip")
        if clip is None or _clip_bounds(clip, inits) is None or not np.allclose(_clip_bounds(clip, inits), (0.0, 6.0)):
            continue
        mul = single(clip.output[0], "Mul")
        if mul is None or set(mul.input) != {x, clip.output[0]}:
            continue
        div = single(mul.output[0], "Div")
        if div is None or div.input[0] != mul.output[0] or _scalar(inits, div.input[1]) is None \
                or not np.isclose(_scalar(inits, div.input[1]), 6.0):
            continue
        out = div.output[0]
        if opset >= 14:
            new = [helper.make_node("HardSwish", [x], [out], name=f"{add.name}_HardSwish")]
        else:
            gate = f"{add.name}_hardsigmoid"
            new = [
                helper.make_node("HardSigmoid", [x], [gate], name=f"{add.name}_HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
                helper.make_node("Mul", [x, gate], [out], name=f"{add.name}_HardSwish"),
            ]
        replace[id(add)] = new
        drop.update({id(clip), id(mul), id(div)})
        fused += 1
    if fused:
        nodes = []
        for node in graph.node:
            if id(node) in drop:
                continue
            nodes.extend(replace.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name in used or i.name in outputs]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return fused
