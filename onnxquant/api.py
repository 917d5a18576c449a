"""The public entry points, each a short walk through the pipeline's stages (``onnxquant.pipeline``):

    load -> prepare -> prune -> smooth -> calibrate -> plan -> recover -> rewrite -> check -> save

The samples and run-time settings travel as one ``RunData``: give it as ``run=``, or give the
loose keywords (``data``, ``holdout``, ``metric``, ``agreement``, ``progress``) that build it.
The CLI is a thin layer over these.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from onnxquant.calibration.collector import ProgressCallback
from onnxquant.calibration.observers import StatsTable
from onnxquant.calibration.sources import open_for_model
from onnxquant.calibration.stats_io import save_stats
from onnxquant.errors import CalibrationDataError, UsageError
from onnxquant.first_layers import first_layers_said
from onnxquant.float_weights import FLOAT_LAYERS_KEY
from onnxquant.layer_errors import TensorError, dequantized_names, tensor_errors
from onnxquant.agreement.graph_hints import graph_hints
from onnxquant.mixed_precision import Holdout, LayerSensitivity, Metric
from onnxquant.model_io import PROTOBUF_LIMIT, serialize
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.outputs import all_or_nothing, data_files, model_files, model_outputs, refuse_aliasing
from onnxquant.pipeline.build import build
from onnxquant.pipeline.calibrate import calibrate as calibrate_stage
from onnxquant.pipeline.check import check
from onnxquant.pipeline.clock import stage_clock
from onnxquant.pipeline.compact import compact
from onnxquant.pipeline.islands import without_islands
from onnxquant.pipeline.load import load
from onnxquant.pipeline.mixed import mixed_precision
from onnxquant.pipeline.prepare import prepare
from onnxquant.pipeline.prune import prune as prune_stage
from onnxquant.pipeline.ranking import rank
from onnxquant.pipeline.remake import remade_from_copy
from onnxquant.pipeline.run_data import RunData, run_data
from onnxquant.pipeline.float_compute import float_compute
from onnxquant.pipeline.save import RECIPE_KEY, VERSION_KEY, save
from onnxquant.pipeline.search import float_compute_decided, search, split_for_search
from onnxquant.search.candidates import FLOAT_COMPUTE
from onnxquant.pipeline.selection import refuse_already_quantized
from onnxquant.pipeline.smooth import smooth
from onnxquant.pipeline.state import State
from onnxquant.pipeline.summary import quantize_result
from onnxquant.prune.storage import compressed_size, store_sparse
from onnxquant.recipe import Recipe, recipe_for_target
from onnxquant.results import FloatNode, PruneResult, QuantizeResult
from onnxquant.validate import validate

__all__ = ["FLOAT_LAYERS_KEY", "RECIPE_KEY", "VERSION_KEY", "FloatNode", "PruneResult", "QuantizeResult", "RunData",
           "calibrate", "diagnose", "layer_errors", "prune", "quantize", "sensitivity", "validate"]

Model = onnx.ModelProto | str | os.PathLike


def quantize(
    model: Model,
    data: Any = None,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    *,
    stats: StatsTable | str | os.PathLike | None = None,
    save_stats_to: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    holdout: Any = None,
    max_drop: float | None = None,
    metric: Metric | None = None,
    agreement: str = "cosine",
    diagnostics: bool = False,
    run: RunData | None = None,
) -> QuantizeResult:
    """Quantize ``model`` to int8 QDQ from calibration ``data`` (or saved ``stats``).

    ``data``: a folder of .npz files or images, an iterable of ``{input: array}`` dicts, or an onnxruntime
    ``CalibrationDataReader``. ``recipe`` defaults to ``recipe_for_target("cpu")``: weights for this host's CPU
    kind, as the CLI. The input model is never modified; ``output`` is written atomically, after its self-check.

    ``max_drop``: automatic mixed precision. The fewest most-sensitive layers stay float so
    that the drop on ``holdout`` (default: the calibration data) is at most ``max_drop``: 1
    minus the worst output's mean cosine with fp32 (``agreement="top1"``: top-1 agreement for
    ``(batch, classes)`` outputs), or, with ``metric``, the fp32 score minus the quantized score.

    ``diagnostics``: also keep histograms and the prepared float model in the result, for reports.
    """
    run = run_data(run, calib_data=data, holdout=holdout, metric=metric, drop_by=agreement, progress=progress)
    with run.applied(), all_or_nothing(), stage_clock() as clock, contextlib.ExitStack() as on_disk:
        recipe = recipe or recipe_for_target("cpu")
        _refuse_aliasing(model, run, stats if not isinstance(stats, StatsTable) else None, output, save_stats_to)
        pruned = _pruned(model, recipe, run)
        run.check_output_kinds(pruned.model)
        split = split_for_search(pruned, run, saved_stats=stats is not None, max_drop=max_drop)
        # the search's refit smooths a fresh float model: this one, kept on disk before smoothing rewrites it
        float_model = on_disk.enter_context(remade_from_copy(pruned, lambda: _pruned(model, recipe, run))) \
            if split.searching else None
        calibrating = split.run if split.searching else run  # the search holds part of the data out
        state = refuse_already_quantized(smooth(pruned, calibrating, saved_stats=stats is not None))
        wanted = True if save_stats_to is not None or diagnostics or split.searching else None  # None: as the method needs
        calibrated = calibrate_stage(state, calibrating, stats, histograms=wanted)
        said = _loop_pairs_said(calibrated, run)
        # Where integer kernels would be slower than fp32, float compute on int8 weights, decided
        # before any search: the float-compute model is built from the input again.
        decided = float_compute(calibrated, lambda: _pruned(model, recipe, run, integer_kernels=False))
        conv_estimate = decided.conv_estimate
        if decided.float_compute is None:
            calibrated = decided  # (with the first layers it keeps float for speed, if any)
        if decided.float_compute is not None:
            state = decided
            if split.searching:  # no trial ran; the held-out samples still score the chosen model
                why = float_compute_decided(decided.float_compute)
                state = split.unsearched(decided, calibrated.model, run, why, FLOAT_COMPUTE)
        elif split.searching:
            # handed over: without diagnostics, the search holds the only reference to the calibrated model
            handed = [decided]  # (the calibrated state, with the Convs' estimate for the float-compute trial)
            kept = calibrated if diagnostics else None
            del calibrated, pruned, decided, state
            state = search(handed, split, run, diagnostics, float_model,
                           lambda: _pruned(model, recipe, run, integer_kernels=False))
            calibrated = kept
        elif max_drop is None:
            state = without_islands(calibrated, run, keep_calibrated=diagnostics)
        else:
            state = mixed_precision(calibrated, run, max_drop)
        estimate = None if state.float_compute is not None else conv_estimate  # (the search's choice)
        state = replace(state, conv_estimate=estimate).noted(*said)
        state = save(compact(check(split.told(first_layers_said(state)))), output)
        if save_stats_to is not None and stats is None:  # last: a failure before leaves no statistics file
            save_stats(state.stats, save_stats_to)
        return quantize_result(state, clock, calibrated if diagnostics else None)


def prune(
    model: Model,
    data: Any = None,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    *,
    holdout: Any = None,
    metric: Metric | None = None,
    agreement: str = "cosine",
    progress: ProgressCallback | None = None,
    run: RunData | None = None,
) -> PruneResult:
    """Prune ``model`` as ``recipe.prune`` says and return a float model (prepared as for
    quantization: BatchNorm folded, constants folded), written atomically to ``output``.

    ``data`` is needed for Wanda scores and for ``max_drop`` (held-out samples default to it).
    ``progress``: called with (layers refit, layers) while the pruned layers are refit.
    """
    run = run_data(run, calib_data=data, holdout=holdout, metric=metric, drop_by=agreement, progress=progress)
    with run.applied(), all_or_nothing():
        started = time.perf_counter()
        recipe = recipe or recipe_for_target("cpu")
        _refuse_aliasing(model, run, None, output, None)
        if not recipe.prune.enabled:
            raise UsageError("nothing to prune: give a sparsity, a threshold, a pattern (2:4) or a channel fraction")
        original = Path(model).read_bytes() if not isinstance(model, onnx.ModelProto) else None
        state = prune_stage(prepare(load(model, recipe, run)), run)
        if original is None:
            original = serialize(model) if model.ByteSize() < PROTOBUF_LIMIT else b""
        sparse = store_sparse(state.model) if recipe.prune.sparse_storage else 0
        notes = tuple(n for n in state.notes if n != "pruning: " + state.pruning.summary())  # the report says it
        first = run.first_sample(state.model, recipe) if run.rereadable else None
        state = save(replace(state, notes=notes, first_sample=first), output)
        saved = state.saved
        notes = (*state.notes, *([f"{sparse} initializers stored sparse"] if sparse else []))
        return PruneResult(state.model, saved.path, state.pruning, state.size_before, saved.size,
                           compressed_size(original), saved.deflated or 0, sparse, time.perf_counter() - started,
                           list(notes))


def calibrate(
    model: Model,
    data: Any,
    recipe: Recipe | None = None,
    progress: ProgressCallback | None = None,
    histograms: bool | None = None,
    *,
    run: RunData | None = None,
) -> StatsTable:
    """Collect activation statistics only (to save them, or to quantize several ways later)."""
    run = run_data(run, calib_data=data, progress=progress)
    with run.applied():
        return calibrate_stage(_smoothed(model, recipe or recipe_for_target("cpu"), run), run, histograms=histograms).stats


def layer_errors(
    model: Model,
    data: Any,
    holdout: Any = None,
    recipe: Recipe | None = None,
    *,
    run: RunData | None = None,
) -> list[TensorError]:
    """Quantize as ``quantize`` would, then compare every quantized tensor with its float value
    on ``holdout`` (default: the calibration data); the tensors that add most error first."""
    run = run_data(run, calib_data=data, holdout=holdout)
    with run.applied():
        calibrated = _calibrated(model, recipe or recipe_for_target("cpu"), run, "layer errors")
        quantized = build(calibrated, run)
        prepared, recipe, sel = calibrated.model, calibrated.recipe, quantized.selection
        by_name = {n.name: n for n in prepared.graph.node}
        tensors = [*sel.activations, *(by_name[node].output[0] for node, _ in sel.weights)]
        source = run.samples(prepared, recipe, run.holdout)
        return tensor_errors(prepared, quantized.model, tensors, source, recipe.calibration.max_samples)


def sensitivity(
    model: Model,
    data: Any,
    holdout: Any = None,
    recipe: Recipe | None = None,
    metric: Metric | None = None,
    progress: ProgressCallback | None = None,
    agreement: str = "cosine",
    *,
    run: RunData | None = None,
) -> list[LayerSensitivity]:
    """Each weighted layer quantized alone, measured against fp32 on ``holdout`` (default: the
    calibration data); most damaging first."""
    run = run_data(run, calib_data=data, holdout=holdout, metric=metric, drop_by=agreement, progress=progress)
    with run.applied():
        calibrated = _calibrated(model, recipe or recipe_for_target("cpu"), run, "sensitivity")
        return rank(calibrated, run, run.held_out(calibrated.model, calibrated.recipe))


def diagnose(result: QuantizeResult, data: Any, max_samples: int | None = None,
             progress: ProgressCallback | None = None) -> list[TensorError]:
    """Per-tensor error of a ``quantize(..., diagnostics=True)`` result on ``data``, worst first:
    every quantized activation and every weighted layer's output."""
    if result.reference is None:
        raise UsageError("diagnose needs the result of quantize(..., diagnostics=True)")
    reference, quantized = result.reference, result.model
    tensors = [*dequantized_names(quantized), *(n.output[0] for n in reference.graph.node if n.op_type in WEIGHTED_OPS)]
    produced = {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}
    tensors = [t for t in dict.fromkeys(tensors) if t in produced]
    source = open_for_model(reference, data, result.recipe.preprocess)
    return tensor_errors(reference, quantized, tensors, source, max_samples, progress)


def _loop_pairs_said(calibrated: State, run: RunData) -> tuple[str, ...]:
    """Validate's note on a boxes/scores pair a Loop or Scan keeps apart (read on their own: a
    decoder's outputs, or a detector's whose NMS is a Loop), from the first calibration sample's
    fp32 outputs; only a model with an output out of a Loop or Scan runs that sample again."""
    if calibrated.first_sample is None or "per_step" not in graph_hints(calibrated.model).values():
        return ()
    held = Holdout.from_samples(calibrated.model, [calibrated.first_sample], None, "fine", run.output_kinds)
    return held.loop_pair_notes()


def _pruned(model: Model, recipe: Recipe, run: RunData, integer_kernels: bool = True) -> State:
    """load -> prepare -> prune. (Progress is the calibration's: pruning here reports none.)"""
    return prune_stage(prepare(load(model, recipe, run), integer_kernels), replace(run, progress=None))


def _smoothed(model: Model, recipe: Recipe, run: RunData, saved_stats: bool = False) -> State:
    """load -> prepare -> prune -> smooth: the float model calibration observes, and its selection."""
    return smooth(_pruned(model, recipe, run), run, saved_stats)


def _calibrated(model: Model, recipe: Recipe, run: RunData, what: str) -> State:
    """The calibrated state, for the diagnostic commands (which read the data more than once)."""
    if not run.rereadable:
        raise CalibrationDataError(f"{what} needs calibration data (a folder or a list)")
    quiet = replace(run, progress=None)  # (progress is the diagnostic's own)
    return calibrate_stage(_smoothed(model, recipe, quiet), quiet)


def _paths(*items: Any) -> Iterator[Path]:
    """The files a command reads from: models with their external data, sample folders' files
    (a generator: expanded only when an output could be one of them)."""
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            yield from (model_files(path) if path.suffix.lower() == ".onnx" or path.is_file() else data_files(path))


def _refuse_aliasing(model: Any, run: RunData, stats: Any, output: Any, save_stats_to: Any) -> None:
    """Before any work: no output may be an input file (or another output)."""
    outputs = [*(model_outputs(output) if output is not None else []), save_stats_to]
    refuse_aliasing(_paths(model, run.calib_data, run.holdout, stats), outputs)
