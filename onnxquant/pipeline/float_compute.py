"""Stage ``float_compute``: where int8 kernels would make the model slower than fp32, deliver
int8-stored weights computed in float instead.

On x86 without VNNI, onnxruntime's int8 depthwise and few-channel convolutions cost more than
its fp32 ones (``conv_cost.py``); a mobile network made of them (the PP-OCR direction
classifier) is slower as int8 with every layer fused, and keeping some layers float is slower
still (Transposes, Q/DQ round trips). So when the ``check`` stage estimates the quantized
model's convolutions slower than fp32 on the target CPU kind, the model is built again from
the float model, prepared as for float kernels (no HardSigmoid-as-Conv gates), with every
Conv/Gemm/MatMul weight stored as ``Cast(int8) * scale`` (``passes/weight_only.py``): the file
keeps int8 weights, and onnxruntime folds them back into float initializers when the session
loads, so the runtime graph is fp32's. ``quantization.integer_compute`` overrides the estimate.

The convolutions' estimate decides only where the Convs hold at least ``MIN_CONV_WEIGHT_SHARE``
of the 8-bit weights (a conv stem in front of a transformer or an LSTM keeps its integer
kernels), and int8 must cost at least ``MIN_EXTRA_US`` more per sample. Small MatMul/Gemm layers
(``dense_cost.py``: a scikit-learn MLP, 1.19x fp32 as int8 with every layer fused) decide where
they hold that share of the weights themselves, with the convolutions' estimate counted in:
their per-call int8 work is a fixed cost per layer, so no floor in microseconds applies (a 15 us
model is as much slower, relatively, as a 15 ms one).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import onnx

from onnxquant.conv_cost import COSTS, ConvEstimate, estimate, known_shapes
from onnxquant.dense_cost import DenseEstimate
from onnxquant.dense_cost import estimate as dense_estimate
from onnxquant.first_layers import SlowStem, slow_stems
from onnxquant.host import host_cpu
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.passes.prepare import default_opset
from onnxquant.passes.weight_only import (
    PER_CHANNEL_OPSET,
    WeightOnly,
    quantize_weights_only,
)
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.selection import ALREADY_QUANTIZED_NOTE
from onnxquant.pipeline.state import State
from onnxquant.planner import ALREADY_QUANTIZED, Selection, _selected_by_user, is_dequantized
from onnxquant.results import FloatCompute
from onnxquant.weight_only_planner import select_weight_only

MIN_CONV_WEIGHT_SHARE = 0.5
# Below this estimated extra time per sample the difference is lost in what any onnxruntime run
# costs (session.run's own overhead is 10-20 us here): a toy model keeps its integer kernels.
MIN_EXTRA_US = 20.0
WHY = "int8 weights, float compute (int8 kernels would be slower here)"


@timed("float_compute")
def float_compute(state: State, float_model: Callable[[], State]) -> State:
    """``state`` (calibrated, its selection planned) with its convolutions' estimate, or, where
    integer kernels would be slower (or the recipe asks), the float-compute model built on
    ``float_model()``: the same input loaded, prepared for float kernels and pruned as
    ``state``'s was. The calibrated state's statistics, timings and warnings are kept."""
    found, dense, stems = _estimates(state)
    setting = state.recipe.quantization.integer_compute
    convs_slower = (found is not None and found.int8_us - found.fp32_us >= MIN_EXTRA_US
                    and found.weight_share >= MIN_CONV_WEIGHT_SHARE)
    dense_slower = dense is not None and _dense_slower(found, dense)
    if state.recipe.target != "cpu" or setting is True or (setting is None and not (convs_slower or dense_slower)):
        if setting is True or not stems:
            return replace(state, conv_estimate=found)
        kept = _without(found, stems)
        return replace(state, conv_estimate=kept, float_layers={s.name: s.reason for s in stems})
    prepared = float_model()
    model, recipe = prepared.model, state.recipe
    per_channel = recipe.quantization.per_channel and default_opset(model) >= PER_CHANNEL_OPSET
    sel = _float_compute_selection(model, replace(prepared, recipe=recipe), per_channel)  # (a search trial's recipe)
    select_weight_only(model, recipe, sel, per_channel)  # recurrent layers and If/Loop/Scan bodies, as ever
    q = recipe.quantization
    quantize_weights_only(model, sel.weight_only, q.weight_type, default_opset(model),
                          dynamic_lstm=q.recurrent_integer is not False, fold_recurrent=q.recurrent_integer is False,
                          reduce_range=q.reduce_range)
    estimated = setting is None
    already = [note for note in state.notes if note.startswith(ALREADY_QUANTIZED_NOTE)]  # (said by selection.py)
    done = FloatCompute(sum(w.fold for w in sel.weight_only.values()), found if estimated else None,
                        dense if estimated and dense_slower and not convs_slower else None)
    return replace(state, model=model, selection=sel, preparation=prepared.preparation, pruning=prepared.pruning,
                   plan=None, fusion=None, float_nodes=None, mixed=None, search=None, conv_estimate=None,
                   float_layers={}, float_compute=done, notes=(*prepared.notes, *already, done.note()))


def _estimates(state: State) -> tuple[ConvEstimate | None, DenseEstimate | None, list[SlowStem]]:
    """The planned Convs' estimated time in fp32 and int8, and the planned MatMul/Gemm layers'
    extra time as int8, on the target CPU kind, from their shapes for the first sample
    (conv_cost.py, dense_cost.py); None off the CPU target or where nothing is known. And the
    first-layer Convs estimated clearly slower as int8 (``slow_stems``)."""
    recipe = state.recipe
    if recipe.target != "cpu" or state.first_sample is None or state.selection is None:
        return None, None, []
    kind = recipe.cpu.kind if recipe.cpu is not None else host_cpu().kind
    shapes = {name: tuple(value.shape) for name, value in state.first_sample.items()}
    planned = set(state.selection.quantized)
    if not any(state.selection.quantized[name] in ("Conv", "MatMul", "Gemm") for name in planned):
        return None, None, []  # (no layer either estimate counts: no shape inference)
    try:
        known = known_shapes(state.model, shapes)  # one shape inference for both estimates
    except onnx.shape_inference.InferenceError:  # shape inference refused the graph: no estimate
        return None, None, []
    kernels = planned - set(state.selection.weight_only)  # (a graph-output Conv computes in float already)
    stems = slow_stems(state.model, shapes, kind, kernels, known, MIN_EXTRA_US) if kind in COSTS else []
    return (estimate(state.model, shapes, kind, planned, known),
            dense_estimate(state.model, shapes, kind, planned, known), stems)


def _without(found: ConvEstimate | None, stems: list[SlowStem]) -> ConvEstimate | None:
    """The Convs' estimate without the first layers that now compute in float."""
    if found is None:
        return None
    names = {s.name for s in stems}
    if found.layers <= len(names):
        return None
    return replace(found, layers=found.layers - len(names),
                   fp32_us=found.fp32_us - sum(s.fp32_us for s in stems),
                   int8_us=found.int8_us - sum(s.int8_us for s in stems),
                   slower=tuple(n for n in found.slower if n not in names))


def _dense_slower(convs: ConvEstimate | None, dense: DenseEstimate) -> bool:
    """Whether the MatMul/Gemm layers, holding most of the weights, make the model slower as int8:
    their extra time, with the Convs' difference counted in, above zero. (A CNN with a small
    classifier head is the Convs' estimate's to decide, with its floor.)"""
    extra = dense.extra_us + (convs.int8_us - convs.fp32_us if convs is not None else 0.0)
    return dense.extra_us > 0 and extra > 0 and dense.weight_share >= MIN_CONV_WEIGHT_SHARE


def _float_compute_selection(model: onnx.ModelProto, prepared: State, per_channel: bool) -> Selection:
    """Every main-graph Conv/Gemm/MatMul with a float32 weight initializer, its weight folded; the
    others float, with why."""
    recipe = prepared.recipe
    op_types = set(recipe.quantization.op_types) if recipe.quantization.op_types else None
    inits = {i.name for i in model.graph.initializer}
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    producer = {o: n for n in model.graph.node for o in n.output}
    sel = Selection()
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        reason = "op type not in the recipe's op_types" if op_types is not None and node.op_type not in op_types else None
        reason = reason or _selected_by_user(node, recipe.nodes)
        if reason is None and (len(node.input) < 2 or node.input[1] not in floats):
            reason = ALREADY_QUANTIZED if len(node.input) > 1 and is_dequantized(node.input[1], producer, inits) \
                else "weight is not a float32 initializer"
        if reason:
            sel.float_nodes[node.name] = (node.op_type, reason)
            continue
        sel.quantized[node.name] = node.op_type
        sel.weight_only[node.name] = WeightOnly((1,), per_channel, WHY, fold=True)
    return sel

