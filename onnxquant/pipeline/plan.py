"""Stage ``plan``: every number the rewrite writes (scales, zero points, axes), from the
statistics; decided on the model, nothing rewritten yet."""
from __future__ import annotations

from dataclasses import replace

import onnx

from onnxquant.calibration.collector import collect
from onnxquant.calibration.observers import needs_histogram
from onnxquant.errors import CalibrationDataError
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import select_nodes
from onnxquant.pipeline.state import State
from onnxquant.planner import Selection, finalize


@timed("plan")
def plan(state: State, run: RunData, inplace: bool = False) -> State:
    """The plan for ``state.planning_recipe``, on a copy of the calibrated model (the calibrated
    state stays re-enterable) or, with ``inplace``, on the model itself (one copy fewer)."""
    recipe = state.planning_recipe
    work = state.model
    if not inplace:
        work = onnx.ModelProto()
        work.CopyFrom(state.model)
    sel = select_nodes(work, recipe, set(state.not_float), state.float_layers)
    if not _ensure_stats(work, sel, state, run):
        raise CalibrationDataError("this selection needs statistics of tensors that were not observed")
    planned = finalize(work, sel, state.stats, recipe)
    return replace(state, model=work, selection=sel, plan=planned, notes=(*state.notes, *planned.notes))


def _ensure_stats(model: onnx.ModelProto, sel: Selection, state: State, run: RunData) -> bool:
    """Observe tensors a narrower selection needs that the full one did not (a Conv's own output
    when its Relu stays float), adding them to the state's statistics. False when they cannot
    be observed."""
    table, recipe = state.stats, state.recipe
    missing = [t for t in sel.observed if t not in table.tensors]
    if not missing:
        return True
    if not run.rereadable:
        return False
    extra = collect(model, missing, run.samples(model, recipe), needs_histogram(recipe.calibration.method),
                    recipe.calibration.max_samples)
    table.tensors.update(extra.tensors)
    return all(t in table.tensors for t in sel.observed)
