"""Stage ``rewrite``: the plan carried out on the graph: Q/DQ pairs, the bodies of If/Loop/Scan,
int8 weights in front of float kernels (recurrent layers), 4-bit MatMul weights; on the CPU,
zero Pads, nearest upsamples and pixel shuffles on the integers, and PRelu as Max (each left float or slow in
onnxruntime otherwise)."""
from __future__ import annotations

from dataclasses import replace

from onnxquant.body_planner import rewrite_bodies
from onnxquant.passes.insert_qdq import insert_qdq
from onnxquant.passes.int4_matmul import to_matmul_nbits
from onnxquant.passes.int8_pad import pad_integers
from onnxquant.passes.int8_upsample import shuffle_integers, upsample_integers
from onnxquant.passes.prelu_as_max import prelu_as_max
from onnxquant.passes.prepare import MIN_QDQ_OPSET, default_opset
from onnxquant.passes.weight_only import quantize_weights_only
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.state import State
from onnxquant.planner import excluded_names


@timed("rewrite")
def rewrite(state: State) -> State:
    """The quantized model (the planned model is rewritten in place)."""
    recipe, work, sel = state.planning_recipe, state.model, state.selection
    q = recipe.quantization
    quantized = insert_qdq(work, state.plan, default_opset(work), inplace=True)
    padded = pad_integers(quantized) if recipe.target == "cpu" else 0  # onnxruntime keeps DQ -> Pad -> Q float
    # onnxruntime's PRelu kernel is slow; a PRelu the user excluded stays as it is
    as_max = prelu_as_max(quantized, excluded_names(quantized.graph, recipe.nodes)) if recipe.target == "cpu" else 0
    # onnxruntime's channels-last uint8 Resize is slow (no fast path for nearest by 2 there)
    upsampled = upsample_integers(quantized) if recipe.target == "cpu" else 0
    shuffled = shuffle_integers(quantized) if recipe.target == "cpu" else 0  # (and its DepthToSpace: a generic shuffle)
    opset = default_opset(work)  # (after insert_qdq, as the bodies' rewrite sees it)
    rewrite_bodies(quantized, recipe, state.stats, set(state.not_float), opset >= MIN_QDQ_OPSET, opset)
    # On the CPU, onnxruntime's DynamicQuantizeLSTM multiplies the int8 weights directly; the
    # other targets get a DequantizeLinear in front of a standard LSTM.
    quantize_weights_only(quantized, sel.weight_only, q.weight_type, default_opset(quantized),
                          dynamic_lstm=recipe.target == "cpu" and q.recurrent_integer is not False,
                          reduce_range=q.reduce_range,
                          fold_recurrent=recipe.target == "cpu" and q.recurrent_integer is False)
    notes = [f"{padded} zero Pad(s) pad the int8 tensor with its zero point (no float island)"] if padded else []
    if as_max:
        notes.append(f"{as_max} PRelu as Max(x, slope * x) (the same function for slopes <= 1; "
                     "onnxruntime's PRelu kernel is several times slower)")
    if upsampled:
        notes.append(f"{upsampled} nearest Resize(s) by whole factors copy the int8 tensor channels-last "
                     "(onnxruntime's channels-last int8 Resize is slow)")
    if shuffled:
        notes.append(f"{shuffled} DepthToSpace(s) move the int8 tensor channels-last "
                     "(onnxruntime's DepthToSpace is a slow generic shuffle)")
    if state.int4:
        replaced = to_matmul_nbits(quantized, set(state.int4), q.int4_block_size)
        notes.append(f"int4 weights: {replaced} MatMul layers as MatMulNBits "
                     f"(block {q.int4_block_size}, float activations)")
    return replace(state, model=quantized, notes=(*state.notes, *notes))
