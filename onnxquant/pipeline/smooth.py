"""Stage ``smooth``: the first selection, and the recovery passes that change activation ranges
(cross-layer equalisation, SmoothQuant), which must run before calibration observes them."""
from __future__ import annotations

from dataclasses import replace

from onnxquant.float_weights import weight_bytes
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import select_nodes
from onnxquant.pipeline.state import State
from onnxquant.planner import node_names
from onnxquant.recovery.pipeline import before_calibration


@timed("smooth")
def smooth(state: State, run: RunData, saved_stats: bool = False) -> State:
    """The model with its activation ranges final, and what the recipe quantizes in it.

    ``saved_stats``: the ranges come from an earlier run's statistics file (smoothing cannot be
    redone without the calibration data then: an error, not a note).
    """
    prepared, recipe = state.model, state.recipe
    sel = select_nodes(prepared, recipe)
    notes: list[str] = []
    changes = before_calibration(prepared, sel, recipe, run.reopener(prepared, recipe), run.unavailable, notes,
                                 saved_stats)
    if changes.nodes_added:
        node_names(prepared)
        sel = select_nodes(prepared, recipe)
    # (the float weights' bytes: the rewrite replaces them)
    return replace(state, selection=sel, notes=(*state.notes, *notes), smoothed=changes.smoothed,
                   weight_bytes=weight_bytes(prepared, state.preparation.float16_weights))
