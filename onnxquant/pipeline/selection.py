"""Which nodes a recipe quantizes, and the decisions about that selection the stages share."""
from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxquant.body_planner import merge_into, plan_bodies
from onnxquant.errors import AlreadyQuantizedError
from onnxquant.model_io import tensor_array
from onnxquant.npu_planner import select_every_op
from onnxquant.ops.recurrent import RECURRENT_OPS
from onnxquant.ops.rules import RULES, Kind
from onnxquant.passes.int4_matmul import eligible as int4_eligible
from onnxquant.passes.int4_matmul import int4_sqnr_db
from onnxquant.passes.prepare import MIN_QDQ_OPSET, default_opset
from onnxquant.pipeline.state import State, excluding
from onnxquant.planner import Selection, _selected_by_user, select
from onnxquant.prequantized import compressed_layers, describe
from onnxquant.recipe import Recipe
from onnxquant.weight_only_planner import select_weight_only


def select_nodes(model: onnx.ModelProto, recipe: Recipe, not_float: set[str] | frozenset[str] | None = None,
                 float_layers: Mapping[str, str] | None = None) -> Selection:
    """The nodes ``recipe`` quantizes in ``model``: QDQ integer kernels (also inside bodies), then
    the weight-only layers (recurrent layers, the rest of the bodies). ``float_layers``: first-layer
    Convs kept float, with why (a node the user's own patterns exclude keeps that reason)."""
    per_channel_ok = default_opset(model) >= MIN_QDQ_OPSET
    if float_layers:
        mine = {n.name for n in model.graph.node if n.name in float_layers and _selected_by_user(n, recipe.nodes) is None}
        float_layers = {name: why for name, why in float_layers.items() if name in mine}
        recipe = excluding(recipe, sorted(float_layers))
    not_float = set(not_float) if not_float is not None else None
    if recipe.every_op:
        sel = select_every_op(model, recipe, not_float, per_channel_ok)
    else:
        sel = select(model, recipe, not_float=not_float, per_channel_ok=per_channel_ok)
    merge_into(sel, plan_bodies(model, recipe, not_float, per_channel_ok))  # integer kernels in bodies
    select_weight_only(model, recipe, sel, per_channel_ok)  # recurrent layers, the rest of the bodies
    for name, why in (float_layers or {}).items():
        if name in sel.float_nodes:
            sel.float_nodes[name] = (sel.float_nodes[name][0], why)
    return sel


# the note's start: a float-compute model, prepared anew, carries it over (float_compute.py)
ALREADY_QUANTIZED_NOTE = "already quantized: "


def _weighted_op(op: str) -> bool:
    """A layer type with a learned weight: a QDQ weighted rule, or a recurrent layer (which has no
    QDQ rule; its weights are stored int8). Ops without a rule (an NPU's Softmax) are not."""
    rule = RULES.get(op)
    return op in RECURRENT_OPS or (rule is not None and rule.kind == Kind.WEIGHTED)


def refuse_already_quantized(state: State) -> State:
    """Stop with one line when an already-quantized model has nothing float left to compress.
    A MatMul of two activations (attention's scores) is of a weighted op type but holds no weight:
    quantizing only those leaves the file as large and, on an int8 QDQ transformer (Pipecat's
    smart-turn), slower and less accurate, so it does not count as a float weighted layer."""
    done = compressed_layers(state.model)
    if not done:
        return state
    sel = state.selection
    with_weight = {node for node, _ in sel.weights} | set(sel.weight_only) | sel.body_weighted
    if not any(_weighted_op(op) and name in with_weight for name, op in sel.quantized.items()):
        raise AlreadyQuantizedError(f"the model is already quantized ({describe(done)}) and has no float "
                                    "weighted layer left that onnxquant can quantize")
    return state.noted(f"{ALREADY_QUANTIZED_NOTE}{describe(done)}; the float remainder is quantized")


def int4_candidates(state: State) -> tuple[list[str], int]:
    """MatMul layers whose weight int4 keeps well enough (graph order), and how many it would not."""
    q = state.recipe.quantization
    if q.weight_bits != 4:
        return [], 0
    sel = select_nodes(state.model, state.recipe, state.not_float)
    inits = {i.name: i for i in state.model.graph.initializer}
    chosen, rejected = [], 0
    for node in state.model.graph.node:
        if node.name not in sel.quantized or node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = tensor_array(inits[node.input[1]])
        if not int4_eligible(weight.shape, q.int4_block_size):
            continue
        if int4_sqnr_db(weight, q.int4_block_size) >= q.int4_min_sqnr_db:
            chosen.append(node.name)
        else:
            rejected += 1
    return chosen, rejected


def int4_note(state: State, rejected: int) -> State:
    """Say how many MatMul weights int4 would have kept below the recipe's SQNR floor."""
    if not rejected:
        return state
    return state.noted(f"int4 weights: {rejected} MatMul weights kept int8 (int4 would keep them below "
                       f"{state.recipe.quantization.int4_min_sqnr_db} dB SQNR)")


