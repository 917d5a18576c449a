"""Stage ``prepare``: fix input shapes, fold, fuse, upgrade the opset, simplify; name every node."""
from __future__ import annotations

from dataclasses import replace

from onnxquant.ops.rules import DEFAULT_OP_TYPES
from onnxquant.passes.prepare import prepare_model
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.state import State
from onnxquant.planner import node_names
from onnxquant.recipe import Recipe
from onnxquant.shapes import fix_input_shapes


@timed("prepare")
def prepare(state: State, integer_kernels: bool = True) -> State:
    """The model ready to plan. A model loaded from a file (or reshaped here) is rewritten in place.
    ``integer_kernels`` false: prepared for float compute (float_compute.py), no rewrite made for
    integer kernels only."""
    loaded, shapes = state.model, state.shapes
    if shapes:
        loaded = fix_input_shapes(loaded, shapes)
    prepared, report = prepare_model(loaded, simplify=state.recipe.simplify, owned=state.owned or bool(shapes),
                                     gelu=state.recipe.every_op, integer_gates=integer_kernels and _integer_gates(state.recipe),
                                     transformer=_transformer_fusion(state.recipe),
                                     integer_upsampling=integer_kernels and _integer_upsampling(state.recipe))
    del loaded
    notes = list(report.notes)
    if shapes:
        notes.append("input shapes fixed to " + ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())))
    node_names(prepared)
    return replace(state, model=prepared, owned=True, preparation=report,
                   notes=(*state.notes, *notes)).warned(*report.warnings)


def _integer_gates(recipe: Recipe) -> bool:
    """HardSigmoid becomes Conv + Clip only where that makes integer kernels: the CPU target,
    with Conv and Mul quantized (onnxruntime has no integer HardSigmoid)."""
    return recipe.target == "cpu" and {"Conv", "Mul"} <= set(recipe.quantization.op_types or DEFAULT_OP_TYPES)


def _integer_upsampling(recipe: Recipe) -> bool:
    """A kernel == stride ConvTranspose becomes a 1x1 Conv and a DepthToSpace only where both
    make integer kernels: the CPU target with Conv and DepthToSpace quantized (onnxruntime's CPU
    provider has no integer ConvTranspose; other targets run it themselves), and uint8
    activations: the channels-last move of the integers that makes the shuffle fast is uint8
    only (passes/int8_upsample.py), so with int8 it would stay onnxruntime's generic
    DepthToSpace, a trade not measured."""
    return recipe.target == "cpu" and recipe.quantization.activation_type == "uint8" \
        and {"Conv", "DepthToSpace"} <= set(recipe.quantization.op_types or DEFAULT_OP_TYPES)


def _transformer_fusion(recipe: Recipe) -> bool:
    """Attention blocks fused for QAttention (the CPU target), but not before pruning: pruning
    reads Conv/Gemm/MatMul weights, and a fused Attention's Q/K/V weights would escape it."""
    return recipe.transformer_fusion and not recipe.prune.enabled
