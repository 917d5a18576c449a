"""Stage ``check``: what the quantized model is, told before it is saved: fp16 weights stored
back as the input had them, which nodes stay float and why (with their share of the weight
bytes), and warnings for what will run slowly."""
from __future__ import annotations

from dataclasses import replace

import onnx

from onnxquant.dense_cost import estimate as dense_estimate
from onnxquant.float_weights import WARN_FLOAT_SHARE, float_weighted_nodes
from onnxquant.host import CPU_KINDS, host_cpu
from onnxquant.ops.recurrent import RECURRENT_OPS
from onnxquant.passes.float16 import exact_float16_parameters, store_float16
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.float_compute import MIN_CONV_WEIGHT_SHARE
from onnxquant.pipeline.state import State
from onnxquant.planner import ALREADY_QUANTIZED, NOT_FLOAT, Selection, planned_unmatched, unmatched_patterns
from onnxquant.prequantized import QOPERATOR_OPS
from onnxquant.results import FloatNode

# Float nodes worth telling the user about: compute-heavy ops that stayed float.
# Why a classic-ML op (tree ensemble, SVM, linear model, scaler) stays float.
_ATTRIBUTE_PARAMETERS = "ai.onnx.ml op: its parameters are float attributes, and ONNX has no integer form of it"

_INTERESTING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "GlobalAveragePool",
                "AveragePool", "MaxPool", "Sigmoid", "LeakyRelu", "Resize", "Relu", "Clip", *RECURRENT_OPS}


@timed("check")
def check(state: State) -> State:
    """The state with its float report and warnings (the model's fp16 weights restored in place)."""
    fp16 = state.preparation.float16_weights
    if fp16:
        kept16 = store_float16(state.model, fp16)
        if kept16:
            state = state.noted(f"{kept16} float weight(s) stored in fp16 as in the original")
    exact16 = exact_float16_parameters(state.model)
    if exact16:
        halved = store_float16(state.model, exact16, weights_only=False)
        state = state.noted(f"{halved} float parameter(s) of Conv/Gemm layers stored fp16: every value is an fp16 "
                            "value (a model converted from fp16 storage), so the numbers are the same")
    # Shape arithmetic (int64 Concat, Gather of shapes...) is not float compute: not reported.
    floats, warnings = _float_report(state.model, state.selection, state.weight_bytes)
    fusion = state.fusion
    if fusion is not None and fusion.round_trips:
        warnings.append(f"{len(fusion.round_trips)} float op(s) run between integer kernels in onnxruntime "
                        f"({fusion.round_trip_summary()}): each pays a dequantize/quantize round trip, so these "
                        "parts may run slower than in fp32")
    slower = _slower_by_construction(state) or _small_dense_layers(state)
    if slower:
        warnings.append(slower)
    # a pattern that selects no node of the result but did select nodes of the planned model took
    # effect there (a rewrite replaced them after planning): no warning
    nodes = state.recipe.nodes
    planned = set(planned_unmatched(state.selection, nodes)) if state.selection is not None else None
    warnings.extend(_unmatched(key, pattern, (key, pattern) in state.input_matched)
                    for key, pattern in unmatched_patterns(state.model, nodes)
                    if planned is None or (key, pattern) in planned)
    return replace(state, float_nodes=tuple(floats)).warned(*warnings)


def _unmatched(key: str, pattern: str, in_input: bool) -> str:
    """The warning for a node pattern that selects no node of the result nor of the planned
    model; ``in_input``: it selected nodes of the input model, which preparation or a rewrite
    replaced before planning."""
    if in_input:
        return (f"node pattern {pattern!r} ({key}) matched only nodes of the input model that onnxquant replaced "
                "before applying it (folded, fused or rewritten into other ops): it changed nothing")
    return (f"node pattern {pattern!r} ({key}) matched no node: it changed nothing (patterns are a node "
            "name, op:TYPE or re:REGEX; onnxquant inspect --layers lists the layer names)")


def _slower_by_construction(state: State) -> str | None:
    """One line when the quantized Convs are estimated, from their shapes, to run slower as int8
    than in fp32 on the target CPU kind (conv_cost.py, estimated by float_compute), even with every
    layer fused, and the model keeps its integer kernels all the same."""
    found = state.conv_estimate
    if found is None or found.ratio <= 1.0:
        return None
    forced = " (integer kernels forced: integer_compute = true)" if state.recipe.quantization.integer_compute else ""
    return (f"int8 runs slower than fp32 here by construction: its convolutions are estimated at {found.ratio:.2f}x "
            f"fp32's time on {CPU_KINDS[found.cpu_kind].label} ({len(found.slower)} of {found.layers} are "
            "depthwise or have few channels, where onnxruntime's int8 kernels cost more than fp32's)"
            f"{forced}; measure with onnxquant validate")


def _small_dense_layers(state: State) -> str | None:
    """One line when the quantized MatMul/Gemm layers are so small that onnxruntime's per-call
    int8 work is estimated to outweigh what int8 saves (dense_cost.py), with the convolutions'
    estimate counted in, on a model that keeps its integer kernels, where they hold at least
    ``MIN_CONV_WEIGHT_SHARE`` of the quantized weights (as for float compute's decision)."""
    recipe = state.recipe
    if recipe.target != "cpu" or state.float_compute is not None or state.first_sample is None:
        return None
    kind = recipe.cpu.kind if recipe.cpu is not None else host_cpu().kind
    shapes = {name: tuple(value.shape) for name, value in state.first_sample.items()}
    try:
        found = dense_estimate(state.model, shapes, kind)
    except onnx.shape_inference.InferenceError:  # shape inference refused the graph: no estimate
        return None
    if found is None or found.extra_us <= 0 or found.weight_share < MIN_CONV_WEIGHT_SHARE:
        return None  # (a small head on a CNN: the Convs, not the head, make the model's speed)
    convs = state.conv_estimate
    if convs is not None and found.extra_us + convs.int8_us - convs.fp32_us <= 0:
        return None
    forced = " (integer kernels forced: integer_compute = true)" if recipe.quantization.integer_compute else ""
    return (f"int8 may run slower than fp32 here: its {found.layers} MatMul/Gemm layer(s) are small ({found.macs:,} "
            f"multiply-adds a sample in all), where onnxruntime's per-call int8 work (about 1 us a layer on "
            f"{CPU_KINDS[found.cpu_kind].label}) outweighs what int8 saves{forced}; measure with onnxquant validate, "
            "or keep fp32 speed with --float-compute (int8 weights, float compute)")


def _float_report(quantized: onnx.ModelProto, sel: Selection, total_bytes: int) -> tuple[list[FloatNode], list[str]]:
    """Every node left float that is worth telling (compute ops with a reason, and every node of any
    op type, subgraphs included, that reads a float weight), with its share of the weight bytes;
    a warning when more than WARN_FLOAT_SHARE of the weight bytes stays float."""
    weighted = {w.node: w for w in float_weighted_nodes(quantized)}
    floats: list[FloatNode] = []
    for name, (op, reason) in sel.float_nodes.items():
        if reason == ALREADY_QUANTIZED:
            continue
        w = weighted.pop(name, None)
        if w is not None or (op in _INTERESTING and reason != NOT_FLOAT) or "excluded" in reason or "include" in reason:
            size = w.weight_bytes if w is not None else 0
            reason = _ATTRIBUTE_PARAMETERS if w is not None and w.in_attributes else reason
            floats.append(FloatNode(name, op, reason, size, size / total_bytes if total_bytes else 0.0))
    for w in weighted.values():  # not planned at all: inside If/Loop/Scan bodies, or a quantized node's extra input
        if w.node in sel.quantized or not w.weight_bytes or w.op_type in QOPERATOR_OPS:
            continue  # (an integer kernel's float inputs are its bias: DynamicQuantizeLSTM in an If body)
        if w.in_attributes:
            reason = _ATTRIBUTE_PARAMETERS
        elif w.in_subgraph:
            reason = "inside an If/Loop/Scan body (subgraphs are not quantized)"
        else:
            reason = "op type not quantized"
        floats.append(FloatNode(w.node, w.op_type, reason, w.weight_bytes, w.weight_bytes / total_bytes if total_bytes else 0.0))
    share = sum(n.share for n in floats)
    warnings = []
    if not sel.quantized:
        warnings.append("nothing was quantized: the written model computes as the input did, in float, and is "
                        "no smaller (see 'left float' for why)")
    if share > WARN_FLOAT_SHARE:
        top = sorted({n.op_type for n in floats if n.share}, key=lambda op: -sum(n.share for n in floats if n.op_type == op))
        warnings.append(f"{share:.0%} of the input model's weight bytes stay float ({', '.join(top[:4])}): see 'left float'")
    return floats, warnings
