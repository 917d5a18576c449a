"""Stage ``calibrate``: activation statistics of the selected tensors, collected from the
calibration data or read from an earlier run's statistics file."""
from __future__ import annotations

import os
import time
from dataclasses import replace

from onnxquant.calibration.collector import collect
from onnxquant.calibration.observers import StatsTable, needs_histogram
from onnxquant.calibration.stats_io import load_stats
from onnxquant.errors import CalibrationDataError, InputShapeError
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.recovery.bias_correction import MeasuredShifts
from onnxquant.recovery.gptq import GptqFactors


@timed("calibrate")
def calibrate(state: State, run: RunData, stats: StatsTable | str | os.PathLike | None = None,
              histograms: bool | None = None) -> State:
    """The state with its statistics, the tensors found not to be float32, and a first sample for
    the self-check. ``histograms``: collect them or not (None: where the calibration method needs them)."""
    started = time.perf_counter()
    prepared, recipe, sel = state.model, state.recipe, state.selection
    method = recipe.calibration.method
    first = None
    if stats is not None:
        table = stats if isinstance(stats, StatsTable) else load_stats(stats)
        missing = [t for t in sel.observed if t not in table.tensors]
        if len(missing) == len(sel.observed) and missing:
            raise CalibrationDataError("the statistics file does not match this model (no tensor in common)")
        if needs_histogram(method) and any(s.histogram is None for s in table.tensors.values()):
            raise CalibrationDataError(
                f"calibration method {method!r} needs histograms; the statistics file has only min/max"
            )
        if run.calib_data is not None:
            first = run.first_sample(prepared, recipe)
    else:
        if run.calib_data is None:
            raise CalibrationDataError("no calibration data given")
        source = run.samples(prepared, recipe)
        try:
            table = collect(prepared, sel.observed, source,
                            needs_histogram(method) if histograms is None else histograms,
                            recipe.calibration.max_samples, run.progress, _length(source))
        except InputShapeError as exc:
            raise _with_fixed_shapes_hint(exc, state) from exc
        first = run.first_sample(prepared, recipe) if run.rereadable else None
    # Tensors that turned out not to be float32 (unknown before running) narrow the selection.
    return replace(state, stats=table, not_float=frozenset(sel.observed) - set(table.tensors), first_sample=first,
                   seconds={**state.seconds, "calibration": time.perf_counter() - started},
                   measured_shifts=MeasuredShifts(), gptq_factors=GptqFactors())


def _with_fixed_shapes_hint(exc: InputShapeError, state: State) -> CalibrationDataError:
    """A shape error against dims a fixed-shape target (QNN) took from the first sample says so:
    the model itself has free dims there, and "the model expects" alone would mislead."""
    from_sample = {k: v for k, v in state.shapes.items() if k not in state.recipe.shapes}
    if not from_sample:
        return exc
    fixed = ", ".join(f"{k} {list(v)}" for k, v in sorted(from_sample.items()))
    return CalibrationDataError(f"{exc}; target {state.recipe.target!r} compiles fixed input shapes, taken from the "
                                f"first sample ({fixed}): give samples of one shape")


def _length(source: object) -> int | None:
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None
