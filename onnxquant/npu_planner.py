"""Selection for NPU targets: QDQ around every supported op, graph outputs included.

The CPU planner (``planner.select``) quantizes only where onnxruntime's CPU kernels gain from
it. An NPU wants the opposite: every op on integer tensors, so the whole graph compiles for
the accelerator and only the boundary Q/DQ stay on the CPU. The plan it returns is finalized
and written by the same ``finalize`` and ``insert_qdq`` as the CPU plan.
"""
from __future__ import annotations

import onnx

from onnxquant.ops.npu_rules import (
    CLAMPING_ACTIVATIONS,
    PARAMETER_INPUTS,
    QNN_OPS,
    SAME_SCALE_OPS,
)
from onnxquant.ops.rules import weight_axis
from onnxquant.planner import NOT_FLOAT, Selection, _Graph, _selected_by_user
from onnxquant.recipe import Recipe

_WEIGHTED = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1, None)}


class _Groups:
    """Union-find over tensor names: members of a group share one scale."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, t: str) -> str:
        while self.parent.get(t, t) != t:
            t = self.parent[t]
        return t

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def select_every_op(model: onnx.ModelProto, recipe: Recipe, not_float: set[str] | None = None,
                    per_channel_ok: bool = True, ops: frozenset[str] = QNN_OPS) -> Selection:
    """Quantize every float tensor that a supported op reads or writes."""
    g = _Graph(model, not_float)
    sel = Selection()
    groups = _Groups()
    op_types = set(recipe.quantization.op_types) if recipe.quantization.op_types else set(ops)
    activations: list[str] = []

    for node in model.graph.node:
        supported = node.domain in ("", "ai.onnx") and node.op_type in ops and node.op_type in op_types
        if not supported:
            sel.float_nodes[node.name] = (node.op_type, "op type not supported by the target")
            continue
        reason = _selected_by_user(node, recipe.nodes)
        if reason:
            sel.float_nodes[node.name] = (node.op_type, reason)
            continue
        params = PARAMETER_INPUTS.get(node.op_type, frozenset())
        weight_in, bias_in = _WEIGHTED.get(node.op_type, (None, None))
        data_in = [(i, t) for i, t in enumerate(node.input) if t and i not in params]
        float_acts = [t for _, t in data_in if g.is_float_activation(t)]
        float_outs = [t for t in node.output if t and g.is_float_activation(t)]
        if not float_acts and not float_outs:
            sel.float_nodes[node.name] = (node.op_type, NOT_FLOAT)
            continue
        sel.quantized[node.name] = node.op_type
        activations += float_acts + float_outs
        sel.owned.update(float_outs)
        for i, t in data_in:
            if not g.is_float_initializer(t):
                continue
            if i == weight_in:
                shape = tuple(g.initializers[t].dims)
                axis = weight_axis(node, len(shape)) if per_channel_ok and recipe.quantization.per_channel else None
                sel.weights[(node.name, t)] = (i, axis, recipe.quantization.reduce_range)
            elif i == bias_in and recipe.quantization.quantize_bias and len(g.initializers[t].dims) == 1 \
                    and g.is_float_initializer(node.input[weight_in]):
                sel.biases[(node.name, t)] = node.input[weight_in]
            else:
                sel.constants[(node.name, t)] = i
        if node.op_type in SAME_SCALE_OPS and data_in and float_outs:
            for t in float_outs:
                groups.union(data_in[0][1], t)
        if node.op_type in CLAMPING_ACTIVATIONS and float_acts and float_outs:
            src = float_acts[0]
            producer = g.producer.get(src)
            if (producer is not None and producer.op_type not in SAME_SCALE_OPS
                    and len(g.consumers.get(src, [])) == 1 and src not in g.outputs):
                sel.range_from[src] = float_outs[0]

    seen: set[str] = set()
    sel.activations = [t for t in activations if not (t in seen or seen.add(t))]
    sel.owned |= {t for t in sel.activations if t in g.producer}
    sel.boundary_outputs = {t for t in sel.activations if t in g.outputs}
    for t in [*sel.activations, *(k[1] for k in sel.constants)]:
        sel.groups[t] = groups.find(t)
    return sel
