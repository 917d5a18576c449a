"""When each accuracy-recovery pass runs, and what the summary says about it.

``reopen`` gives a fresh pass over the calibration samples, or is None when they cannot be read
again (saved statistics only, or a one-pass onnxruntime reader); ``unavailable`` then says why.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant.errors import UsageError
from onnxquant.planner import QuantPlan, Selection
from onnxquant.recipe import Recipe
from onnxquant.recovery.adaround import adaround
from onnxquant.recovery.bias_correction import MeasuredShifts, correct_biases
from onnxquant.recovery.depthwise_ranges import even_depthwise_inputs, regions
from onnxquant.recovery.equalize import equalize
from onnxquant.recovery.gptq import GptqFactors, gptq
from onnxquant.recovery.pair_limited import limit_pairs
from onnxquant.recovery.smoothquant import applies, smooth

Reopen = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class RangeChanges:
    """What the passes before calibration did to the model."""

    nodes_added: bool = False  # SmoothQuant inserted Mul nodes: the selection must be made again
    smoothed: bool = False  # SmoothQuant changed the model (folded or inserted): its alpha matters


def before_calibration(prepared: onnx.ModelProto, sel: Selection, recipe: Recipe, reopen: Reopen | None,
                       unavailable: str, notes: list[str], saved_stats: bool = False) -> RangeChanges:
    """Passes that change activation ranges (equalisation, SmoothQuant), and what they changed.

    With ``saved_stats`` the ranges come from an earlier run, which smoothed (or not) with the
    calibration data; smoothing cannot be redone without it, so that is an error, not a note.
    """
    settings = recipe.recovery
    if settings.equalize or (settings.equalize is None and not recipe.quantization.per_channel):
        equalized = equalize(prepared)
        if equalized.pairs:
            notes.append(f"cross-layer equalisation: {equalized.pairs} Conv pairs")
        if equalized.bounded:
            notes.append(f"cross-layer equalisation: {equalized.bounded} Conv pairs joined by a bounded "
                         "activation (ReLU6-like) left alone")
    notes.extend(_depthwise(prepared, recipe, reopen, unavailable, saved_stats))
    if not settings.smoothquant or not any(op in ("MatMul", "Gemm") for op in sel.quantized.values()):
        return RangeChanges()
    if reopen is None:
        if not applies(prepared, sel):
            return RangeChanges()
        if saved_stats:
            raise UsageError("SmoothQuant changes activation ranges: to re-quantize from saved statistics, give the "
                             "calibration data too, or turn SmoothQuant off (--no-smoothquant) for both runs")
        notes.append(f"SmoothQuant skipped: {unavailable}")
        return RangeChanges()
    # Where every op is quantized (QNN), an inserted Mul would itself read the raw activation
    # through a uint8 Q/DQ, outliers and all: only folding into a LayerNorm helps there
    # (MiniLM on QNN: cosine 0.857 without smoothing, 0.838 with 12 inserted Muls).
    fold_only = settings.smoothquant_fold_only or recipe.every_op
    report = smooth(prepared, sel, reopen(), settings.smoothquant_alpha, recipe.calibration.max_samples,
                    fold_only=fold_only)
    if report.folded or report.inserted:
        notes.append(f"SmoothQuant (alpha {settings.smoothquant_alpha}): {report.folded} LayerNorm outputs "
                     f"folded, {report.inserted} Mul nodes inserted")
    return RangeChanges(nodes_added=bool(report.inserted), smoothed=bool(report.folded or report.inserted))


def _depthwise(prepared: onnx.ModelProto, recipe: Recipe, reopen: Reopen | None, unavailable: str,
               saved_stats: bool) -> list[str]:
    """Even the depthwise-Conv inputs' channel ranges (on by default with per-channel weights)."""
    wanted = recipe.recovery.depthwise_equalize
    if wanted is False or (wanted is None and not recipe.quantization.per_channel):
        return []
    if reopen is None:
        if not regions(prepared):
            return []
        if saved_stats:
            raise UsageError("depthwise input equalisation changes activation ranges: to re-quantize from saved "
                             "statistics, give the calibration data too, or turn it off (--no-depthwise-equalize) "
                             "for both runs")
        return [f"depthwise input equalisation skipped: {unavailable}"]
    q = recipe.quantization
    done = even_depthwise_inputs(prepared, reopen(), recipe.calibration.max_samples, q.activation_symmetric)
    if not done.regions:
        return []
    return [f"depthwise input equalisation: {done.channels} channels magnified in {done.regions} depthwise Conv "
            "inputs (from calibration ranges, through their producing Conv)"]


def after_plan(prepared: onnx.ModelProto, plan: QuantPlan, recipe: Recipe, reopen: Reopen | None,
               unavailable: str, measured: MeasuredShifts | None = None,
               factors: GptqFactors | None = None, float_source: onnx.ModelProto | None = None) -> list[str]:
    """Passes that need the final scales: GPTQ rounding of token-activation layers, learned
    rounding, then bias correction (which then also cancels the mean shift that the rounding
    leaves). ``measured``: bias corrections' measurements already taken over the same samples,
    to reuse where they fit; ``factors`` likewise for GPTQ. ``float_source``: the calibrated model
    ``prepared`` was copied from, left as it is: the rounding passes' float originals refer to it."""
    settings = recipe.recovery
    wanted = [name for name, on in (("GPTQ rounding", settings.gptq), ("learned rounding", settings.adaround),
                                    ("bias correction", settings.bias_correction)) if on]
    notes: list[str] = []
    by_gptq: list[str] = []
    # the float weights the rounding passes overwrote with their integers: bias correction cancels
    # the mean shift of the weight error against these, not against the rounded values
    originals: Mapping[str, np.ndarray] = {}
    if reopen is not None and settings.gptq is not False:
        rounded = gptq(prepared, plan, reopen(), recipe.calibration.max_samples, factors, float_source)
        gains = sorted(rounded.gain_db.values())
        if rounded.improved:
            notes.append(f"GPTQ rounding: {len(rounded.improved)} token-activation layers improved (median "
                         f"reconstruction gain {gains[len(gains) // 2]:.1f} dB), {len(rounded.unchanged)} kept "
                         "nearest rounding")
        by_gptq = rounded.improved
        originals = rounded.originals  # (read where it is used: some refer to float_source)
    # the layers GPTQ rounded keep its integers (on the 7-bit grid): pair limits would round them again
    notes = [*_pair_limits(prepared, plan, recipe, skip=set(by_gptq)), *notes]
    if reopen is None:
        return [*notes, f"{' and '.join(wanted)} skipped: {unavailable}"] if wanted else notes
    if settings.adaround:
        rounded = adaround(prepared, plan, reopen(), settings.adaround_iterations, settings.adaround_seconds,
                           recipe.calibration.max_samples)
        originals = collections.ChainMap(originals, {w: v for w, v in rounded.originals.items() if w not in originals})
        gains = sorted(rounded.gain_db.values())
        notes.append(f"learned rounding: {len(rounded.optimized)} layers improved (median reconstruction gain "
                     f"{gains[len(gains) // 2] if gains else 0:.1f} dB), {len(rounded.unchanged)} kept nearest rounding")
        if rounded.skipped:
            notes.append(f"learned rounding: time budget reached, {len(rounded.skipped)} layers kept nearest rounding "
                         "(output depends on machine speed)")
    if settings.bias_correction:
        changed = correct_biases(prepared, plan, reopen(), recipe.calibration.max_samples, measured, originals)
        if changed:
            notes.append(f"bias correction: {changed} biases shifted")
    return notes


def _pair_limits(prepared: onnx.ModelProto, plan: QuantPlan, recipe: Recipe, skip: set[str]) -> list[str]:
    """Pair-limited 8-bit weights in place of 7-bit ones: asked for, or by default for the CPU
    target. Learned rounding works on the 7-bit grid, so with it on they are not made (a note
    says so when they were asked for)."""
    q = recipe.quantization
    wanted = q.pair_limited_weights
    if wanted is None:
        wanted = recipe.target == "cpu"
    if not wanted or not q.reduce_range or q.weight_type != "int8":
        return []
    if recipe.recovery.adaround:
        return ["pair-limited 8-bit weights not made: learned rounding rounds on the 7-bit grid"] \
            if q.pair_limited_weights else []
    changed = limit_pairs(prepared, plan, skip)
    return [f"pair-limited 8-bit weights instead of 7-bit: {len(changed)} layers (no two neighbouring weights sum "
            "past 128, so the u8s8 kernels cannot saturate)"] if changed else []
