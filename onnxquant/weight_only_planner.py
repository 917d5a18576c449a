"""Decide which layers get int8 weights without integer compute: recurrent layers, every
weighted layer inside If/Loop/Scan bodies, and Convs that write a graph output.

A Conv that writes a graph output gets no integer kernel (QLinearConv would requantize the
output); exported regressors and detectors often end in one that holds most of the weights
(MediaPipe's face mesh: 67% of the bytes in its 1404-landmark Conv): its weights are stored int8 in
front of a float Conv, so the file shrinks all the same.

Runs after the main planner (CPU or NPU) and moves those layers from its float list to its
quantized list, with ``Selection.weight_only`` saying which weights and why the compute stays
float. Layers that stay entirely float keep (or get) a reason in ``Selection.float_nodes``.
Body layers are named by their qualified name (``If_0/then_branch/Conv_3``, see
``passes.scopes``).
"""
from __future__ import annotations

import onnx

from onnxquant.body_planner import IN_BODY
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.ops.recurrent import RECURRENT_OPS, RECURRENT_WEIGHT_INPUTS, WEIGHT_ONLY_REASON, is_recurrent
from onnxquant.passes.scopes import ScopedNode, iter_scoped_nodes
from onnxquant.passes.weight_only import WeightOnly
from onnxquant.planner import GRAPH_OUTPUT, Selection, _selected_by_user
from onnxquant.recipe import Recipe

# Graph-output layers whose weights are stored int8 for a float kernel (ConvTranspose: no per-channel
# axis with groups; Gemm/MatMul keep float outputs from their own integer kernels)
GRAPH_OUTPUT_WEIGHT_ONLY = {"Conv"}
GRAPH_OUTPUT_REASON = "int8 weights, float compute: its output is a graph output, which an integer kernel would requantize"

NO_BODY_PLAN = ("no integer kernels in this body (no weighted layer with float inputs, or values that calibration "
                "never saw: an If branch no sample took)")


def _visible_float_initializer(scoped: ScopedNode, name: str) -> bool:
    for _, graph in reversed(scoped.scopes):
        for init in graph.initializer:
            if init.name == name:
                return init.data_type == onnx.TensorProto.FLOAT
    return False


def _weight_source(scoped: ScopedNode, name: str) -> str:
    """Where a body layer's weight comes from when it is no visible float32 initializer, so a
    user can find it (paddle2onnx passes a Loop's weights in as loop-carried values)."""
    for depth, (_, graph) in enumerate(reversed(scoped.scopes)):
        where = "" if depth == 0 else " (in an enclosing graph)"
        for init in graph.initializer:
            if init.name == name:
                return f"stored as {onnx.TensorProto.DataType.Name(init.data_type).lower()}{where}, not float32"
        for node in graph.node:
            if name in node.output:
                if node.op_type == "DequantizeLinear":
                    return "already quantized (it comes through a DequantizeLinear)"
                return f"the output of a {node.op_type} node{where}, not an initializer"
        if any(i.name == name for i in graph.input):
            if depth == 0 and scoped.in_body:
                return "an input of the body (a loop-carried value or a scan input), not an initializer"
            return f"a graph input{where}, not an initializer"
    return "not a float32 initializer"


def _weight_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    if is_recurrent(node):
        return RECURRENT_WEIGHT_INPUTS
    if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
        return (1,)
    return ()


def _writes_graph_output(scoped: ScopedNode, sel: Selection) -> bool:
    """A main-graph Conv the planner left float only because it writes a graph output, with a
    float32 weight initializer."""
    node = scoped.node
    return (node.op_type in GRAPH_OUTPUT_WEIGHT_ONLY and node.domain in ("", "ai.onnx")
            and sel.float_nodes.get(scoped.qualified) == (node.op_type, GRAPH_OUTPUT)
            and len(node.input) > 1 and _visible_float_initializer(scoped, node.input[1]))


def select_weight_only(model: onnx.ModelProto, recipe: Recipe, sel: Selection, per_channel_ok: bool) -> None:
    """Add recurrent layers, body layers and graph-output Convs to ``sel`` (in place)."""
    op_types = set(recipe.quantization.op_types) if recipe.quantization.op_types else None
    per_channel = per_channel_ok and recipe.quantization.per_channel
    for scoped in iter_scoped_nodes(model.graph):
        node = scoped.node
        if not scoped.in_body and not is_recurrent(node):
            if _writes_graph_output(scoped, sel):
                sel.float_nodes.pop(scoped.qualified)
                sel.quantized[scoped.qualified] = node.op_type
                sel.weight_only[scoped.qualified] = WeightOnly((1,), per_channel, GRAPH_OUTPUT_REASON, fold=True)
            continue  # the main planner's
        inputs = _weight_inputs(node)
        if not inputs or scoped.qualified in sel.quantized:  # a body's own plan made it an integer kernel
            continue
        reason = "op type not in the recipe's op_types" if op_types is not None and node.op_type not in op_types else None
        named = onnx.helper.make_node(node.op_type, [], [], name=scoped.qualified)  # patterns match the qualified name
        reason = reason or _selected_by_user(named, recipe.nodes)
        if reason is None:
            missing = [i for i in inputs if len(node.input) <= i or not _visible_float_initializer(scoped, node.input[i])]
            if missing:
                what = "weight" if not is_recurrent(node) else f"{node.op_type} {'W' if missing[0] == 1 else 'R'}"
                index = missing[0]
                reason = (f"{what} is {_weight_source(scoped, node.input[index])}" if len(node.input) > index
                          else f"{what} is missing")
        if reason:
            sel.float_nodes[scoped.qualified] = (node.op_type, f"{IN_BODY}: {reason}" if scoped.in_body else reason)
            continue
        # Why no integer kernel: recurrent, or what the body's own planner said.
        _, planner_reason = sel.float_nodes.pop(scoped.qualified, (None, f"{IN_BODY}: {NO_BODY_PLAN}"))
        sel.quantized[scoped.qualified] = node.op_type
        why = WEIGHT_ONLY_REASON if is_recurrent(node) else f"{WEIGHT_ONLY_REASON}; {planner_reason}"
        sel.weight_only[scoped.qualified] = WeightOnly(inputs, per_channel, why)


# Where a recurrent layer with int8 weights computes, per target.
RECURRENT_COMPUTE = {
    "cpu": "on the CPU, LSTM runs as DynamicQuantizeLSTM; GRU and RNN as float kernels",
    "qnn": "onnxruntime's QNN EP has no int8 LSTM/GRU: the HTP runs them in fp16 (enable_htp_fp16_precision), "
           "otherwise the CPU in float",
    "openvino": "OpenVINO computes them in float from the int8 weights",
}


# On the CPU with quantization.recurrent_integer = false.
RECURRENT_FLOAT_COMPUTE = "int8 weights dequantized in front of float LSTM, GRU and RNN kernels"


def weight_only_notes(sel: Selection, target: str = "cpu", recurrent_integer: bool | None = None) -> list[str]:
    """Summary lines: which layers have int8 weights but compute in float, and why."""
    recurrent = [sel.quantized[n] for n in sel.weight_only if sel.quantized[n] in RECURRENT_OPS]
    body = [n for n, w in sel.weight_only.items() if sel.quantized[n] not in RECURRENT_OPS and not w.fold]
    body_float = [n for n, (op, reason) in sel.float_nodes.items()
                  if reason.startswith(IN_BODY) and op in (*WEIGHTED_OPS, *RECURRENT_OPS)]
    notes = []
    if recurrent:
        where = RECURRENT_FLOAT_COMPUTE if target == "cpu" and recurrent_integer is False \
            else RECURRENT_COMPUTE.get(target, "a float kernel")
        notes.append(f"recurrent layers: {len(recurrent)} ({', '.join(sorted(set(recurrent)))}) with int8 weights "
                     f"({where})")
    if body:
        notes.append(f"If/Loop/Scan bodies: {len(body)} weighted layers with int8 weights and a float kernel "
                     "(each one's reason is in weight_only)")
    if body_float:
        notes.append(f"If/Loop/Scan bodies: {len(body_float)} weighted layers left float (see the float list)")
    return notes
