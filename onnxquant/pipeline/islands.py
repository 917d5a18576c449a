"""The quantized model for the recipe as given, with the layers onnxruntime would not fuse into
integer kernels (float islands: dequantized weights on every call, slower than fp32) re-planned
as float from the calibrated state."""
from __future__ import annotations

from dataclasses import replace

from onnxquant.pipeline.build import build
from onnxquant.pipeline.kernels import check_kernels
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import int4_candidates, int4_note
from onnxquant.pipeline.state import State

# A second build needs the calibrated model intact, which costs a copy of it: above this size,
# islands are reported, not re-planned.
REPLAN_MAX_BYTES = 512 * 2**20
FLOAT_ISLAND = "onnxruntime would not fuse it (float island)"


def without_islands(calibrated: State, run: RunData, keep_calibrated: bool = False) -> State:
    """Quantize every layer the recipe selects (int4 where it keeps well), except float islands.

    ``keep_calibrated``: leave the calibrated model intact (for diagnostics); otherwise the last
    build rewrites it in place.
    """
    int4, rejected = int4_candidates(calibrated)
    replannable = calibrated.model.ByteSize() < REPLAN_MAX_BYTES
    state = build(calibrated, run, int4=int4, inplace=not (keep_calibrated or replannable))
    if calibrated.recipe.target == "cpu":
        state = check_kernels(state)
    islands = state.fusion.float_islands if state.fusion is not None else []
    if islands and not replannable:
        state = state.warned(f"{len(islands)} quantized layer(s) run as float islands in onnxruntime (dequantized "
                             f"weights on every call); not re-planned: the model is over {REPLAN_MAX_BYTES // 2**20} MB")
    elif islands:
        state = build(calibrated, run, excluded=islands, int4=int4, inplace=not keep_calibrated)
        state = check_kernels(state.noted(f"{len(islands)} layer(s) kept float: onnxruntime would not fuse them "
                                          "into integer kernels (float islands, slower than fp32)"))
        sel = state.selection
        why = {**sel.float_nodes, **{name: (sel.float_nodes[name][0], FLOAT_ISLAND) for name in islands}}
        state = replace(state, selection=replace(sel, float_nodes=why))
    return int4_note(state, rejected)
