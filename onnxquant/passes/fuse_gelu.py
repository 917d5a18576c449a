"""Rewrite the exact GELU, exported as ``x * 0.5 * (1 + erf(x / sqrt(2)))``, into one Gelu op.

PyTorch exports ``nn.GELU`` as five elementwise ops around ``Erf``. The QNN HTP backend has no
quantized Erf, so one Erf sends its whole block back to the CPU; it does run Gelu. The fused
op is ``com.microsoft.Gelu`` below opset 20 (onnxruntime's CPU provider runs it too) and the
standard ``Gelu`` from opset 20 on.
"""
from __future__ import annotations

import math

import onnx
from onnx import helper

from onnxquant.passes.fuse_hardswish import _const_operand
from onnxquant.passes.node_index import NodeIndex

MS_DOMAIN = "com.microsoft"


def _close(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-3)


def fuse_gelu(graph: onnx.GraphProto, opset: int) -> int:
    """Fuse every exact-GELU pattern in ``graph``; return how many were fused."""
    index = NodeIndex(graph)
    nodes, inits, producer, readers, only_reader = (index.nodes, index.inits, index.producer, index.readers,
                                                    index.only_reader)

    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    for k, erf in enumerate(nodes):
        if erf.op_type != "Erf" or k in drop:
            continue
        scaled = producer.get(erf.input[0])
        if scaled is None or nodes[scaled].op_type not in ("Div", "Mul"):
            continue
        operand = _const_operand(nodes[scaled], inits)
        if operand is None:
            continue
        x, c = operand
        if not (_close(c, math.sqrt(2)) if nodes[scaled].op_type == "Div" else _close(c, 1 / math.sqrt(2))):
            continue
        add = only_reader(erf.output[0], "Add")
        if add is None or not _close((_const_operand(nodes[add], inits) or ("", None))[1], 1.0):
            continue
        mul = only_reader(nodes[add].output[0], "Mul")
        if mul is None:
            continue
        other = [t for t in nodes[mul].input if t != nodes[add].output[0]]
        if len(other) != 1:
            continue
        half = None
        if other[0] == x:  # x * (1 + erf) then * 0.5
            half = only_reader(nodes[mul].output[0], "Mul")
            if half is None or not _close((_const_operand(nodes[half], inits) or ("", None))[1], 0.5):
                continue
            chain, out = [scaled, k, add, mul, half], nodes[half].output[0]
        else:  # (x * 0.5) * (1 + erf)
            pre = producer.get(other[0])
            if pre is None or nodes[pre].op_type != "Mul" or len(readers.get(other[0], [])) != 1:
                continue
            pre_operand = _const_operand(nodes[pre], inits)
            if pre_operand is None or pre_operand[0] != x or not _close(pre_operand[1], 0.5):
                continue
            chain, out = [pre, scaled, k, add, mul], nodes[mul].output[0]
        if len(readers.get(nodes[scaled].output[0], [])) != 1 or any(c in drop for c in chain):
            continue
        domain = "" if opset >= 20 else MS_DOMAIN
        fused = helper.make_node("Gelu", [x], [out], name=f"{erf.name}_gelu", domain=domain)
        drop.update(chain)
        replace[max(chain)] = fused  # the last op's position: every reader of out comes later
    if not replace:
        return 0
    new_nodes = [replace.get(k, n) for k, n in enumerate(nodes) if k in replace or k not in drop]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return len(replace)
