"""A finished state told as the public result types (``onnxquant.results``)."""
from __future__ import annotations

from collections import Counter

import onnx

from onnxquant.passes.prepare import PrepareReport
from onnxquant.pipeline.clock import StageClock
from onnxquant.pipeline.state import State
from onnxquant.model_io import iter_graphs
from onnxquant.prequantized import QOPERATOR_OPS
from onnxquant.results import QuantizeResult
from onnxquant import signal_front
from onnxquant.weight_only_planner import weight_only_notes


def quantize_result(state: State, clock: StageClock, diagnostics: State | None = None) -> QuantizeResult:
    """``state`` saved; ``clock``: the run's stage timings; ``diagnostics``: the calibrated state
    whose statistics and float model the result keeps for reports."""
    sel, saved = state.selection, state.saved
    return QuantizeResult(
        model=state.model,
        output_path=saved.path,
        size_before=state.size_before,
        size_after=saved.size,
        quantized_nodes=dict(Counter(sel.quantized.values())),
        float_nodes=list(state.float_nodes or ()),
        samples=state.stats.samples,
        seconds={"calibration": state.seconds["calibration"], "total": clock.total()},
        stages=clock.breakdown(),
        recipe=state.recipe,
        notes=[*_cpu_note(state), *state.notes, *_preparation_notes(state.preparation), *_front_end_note(state),
               *weight_only_notes(sel, state.recipe.target, state.recipe.quantization.recurrent_integer)],
        mixed_precision=state.mixed.to_dict() if state.mixed is not None else None,
        search=state.search.to_dict() if state.search is not None else None,
        size_compressed=saved.deflated,
        pruning=state.pruning,
        stats=diagnostics.stats if diagnostics is not None else None,
        reference=diagnostics.model if diagnostics is not None else None,
        fusion=state.fusion,
        warnings=list(state.warnings),
        weight_only={name: w.reason for name, w in sel.weight_only.items()},
        float_compute=state.float_compute.to_dict() if state.float_compute is not None else None,
    )


def _front_end_note(state: State) -> list[str]:
    """One line when layers stayed float as a signal front end: the user sees why without reading every layer."""
    count = sum(f.reason == signal_front.WHY for f in state.float_nodes or ())
    return [f"{count} layer(s) kept float: {signal_front.WHY}"] if count else []


def _cpu_note(state: State) -> list[str]:
    """Which CPU kind the weights were chosen for, and why (the summary's first line). A
    float-compute model with no integer kernel left (no recurrent one, none of the input's) has
    full 8-bit weights whatever the kind: its note says so, not the kind's 7-bit reason."""
    folded_only = state.float_compute is not None and not _integer_kernels(state.model)
    note = state.recipe.cpu_note(float_compute=folded_only)
    return [note] if note is not None else []


def _integer_kernels(model: onnx.ModelProto) -> bool:
    """Whether any node can run an integer kernel: a QOperator one, or a QuantizeLinear (weights
    behind DequantizeLinear alone compute in float)."""
    return any(node.op_type in QOPERATOR_OPS or node.op_type == "QuantizeLinear"
               for graph in iter_graphs(model.graph) for node in graph.node)


def _preparation_notes(prep: PrepareReport) -> list[str]:
    """What preparing rewrote, counted."""
    notes = []
    if prep.folded_constants:
        notes.append(f"{prep.folded_constants} Constant nodes folded into initializers")
    if prep.folded_affines:
        notes.append(f"{prep.folded_affines} constant Mul/Add (or BatchNormalization after a ConvTranspose) folded into "
                     "Conv weights")
    if prep.fused_hardswish:
        notes.append(f"{prep.fused_hardswish} hard-swish patterns fused")
    if prep.fused_gelu:
        notes.append(f"{prep.fused_gelu} GELU patterns fused into Gelu")
    if prep.gates.total:
        notes.append(f"{prep.gates.total} HardSigmoid gates written as Conv + Clip for integer kernels "
                     f"({prep.gates.folded} folded into their Conv, {prep.gates.depthwise} depthwise 1x1)")
    if prep.affines_as_depthwise:
        notes.append(f"{prep.affines_as_depthwise} constant per-channel affine(s) (Mul/Add, BatchNormalization) "
                     "written as depthwise 1x1 Conv for integer kernels")
    if prep.convtransposes_as_conv:
        notes.append(f"{prep.convtransposes_as_conv} ConvTranspose(s) with kernel == stride written as 1x1 Conv + "
                     "pixel shuffle for integer kernels (onnxruntime has no integer ConvTranspose)")
    return notes
