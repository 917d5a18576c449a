"""Decide which layers get int8 weights without integer compute: recurrent layers and every
weighted layer inside If/Loop/Scan bodies.

Runs after the main planner (CPU or NPU) and moves those layers from its float list to its
quantized list, with ``Selection.weight_only`` saying which weights and why the compute stays
float. Layers that stay entirely float keep (or get) a reason in ``Selection.float_nodes``.
Body layers are named by their qualified name (``If_0/then_branch/Conv_3``, see
``passes.scopes``).
"""
from __future__ import annotations

import onnx

from onnxquant.ops import WEIGHTED_OPS
from onnxquant.ops.recurrent import RECURRENT_OPS, RECURRENT_WEIGHT_INPUTS, WEIGHT_ONLY_REASON, is_recurrent
from onnxquant.passes.scopes import ScopedNode, iter_scoped_nodes
from onnxquant.passes.weight_only import WeightOnly
from onnxquant.planner import Selection, _selected_by_user
from onnxquant.recipe import Recipe

IN_BODY = "inside an If/Loop/Scan body"
BODY_REASON = f"{IN_BODY}: int8 weights dequantized in front of a float kernel (activations inside bodies are not calibrated)"


def _visible_float_initializer(scoped: ScopedNode, name: str) -> bool:
    for _, graph in reversed(scoped.scopes):
        for init in graph.initializer:
            if init.name == name:
                return init.data_type == onnx.TensorProto.FLOAT
    return False


def _weight_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    if is_recurrent(node):
        return RECURRENT_WEIGHT_INPUTS
    if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
        return (1,)
    return ()


def select_weight_only(model: onnx.ModelProto, recipe: Recipe, sel: Selection, per_channel_ok: bool) -> None:
    """Add recurrent layers and body layers to ``sel`` (in place)."""
    op_types = set(recipe.quantization.op_types) if recipe.quantization.op_types else None
    per_channel = per_channel_ok and recipe.quantization.per_channel
    for scoped in iter_scoped_nodes(model.graph):
        node = scoped.node
        if not scoped.in_body and not is_recurrent(node):
            continue  # the main planner's
        inputs = _weight_inputs(node)
        if not inputs:
            continue
        reason = "op type not in the recipe's op_types" if op_types is not None and node.op_type not in op_types else None
        named = onnx.helper.make_node(node.op_type, [], [], name=scoped.qualified)  # patterns match the qualified name
        reason = reason or _selected_by_user(named, recipe.nodes)
        if reason is None:
            missing = [i for i in inputs if len(node.input) <= i or not _visible_float_initializer(scoped, node.input[i])]
            if missing:
                reason = ("weight is not a float32 initializer" if not is_recurrent(node) else
                          f"{node.op_type} {'W' if missing[0] == 1 else 'R'} is not a float32 initializer")
        if reason:
            sel.float_nodes[scoped.qualified] = (node.op_type, f"{IN_BODY}: {reason}" if scoped.in_body else reason)
            continue
        sel.float_nodes.pop(scoped.qualified, None)
        sel.quantized[scoped.qualified] = node.op_type
        why = BODY_REASON if scoped.in_body else WEIGHT_ONLY_REASON
        sel.weight_only[scoped.qualified] = WeightOnly(inputs, per_channel, why)


def weight_only_notes(sel: Selection) -> list[str]:
    """Summary lines: which layers have int8 weights but compute in float, and why."""
    recurrent = [sel.quantized[n] for n, w in sel.weight_only.items() if w.reason != BODY_REASON]
    body = [n for n, w in sel.weight_only.items() if w.reason == BODY_REASON]
    body_float = [n for n, (_, reason) in sel.float_nodes.items() if reason.startswith(IN_BODY)]
    notes = []
    if recurrent:
        notes.append(f"recurrent layers: {len(recurrent)} ({', '.join(sorted(set(recurrent)))}) with int8 weights, "
                     f"float compute ({WEIGHT_ONLY_REASON})")
    if body:
        notes.append(f"If/Loop/Scan bodies: {len(body)} weighted layers with int8 weights, float compute "
                     "(activations inside bodies are not calibrated)")
    if body_float:
        notes.append(f"If/Loop/Scan bodies: {len(body_float)} weighted layers left float (see the float list)")
    return notes
