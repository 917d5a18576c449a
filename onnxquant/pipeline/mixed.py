"""Automatic mixed precision from the calibrated state: int8 with the fewest float layers that
meets ``max_drop``; then, with int4 candidates, as many of the least sensitive as the budget
allows get 4-bit weights. Each trial re-runs plan -> recover -> rewrite (``build``)."""
from __future__ import annotations

from dataclasses import replace

import onnx

from onnxquant.errors import UsageError
from onnxquant.mixed_precision import LayerSensitivity, measure, search, widen_int4
from onnxquant.pipeline.build import build
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.kernels import check_kernels
from onnxquant.pipeline.ranking import rank
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import int4_candidates, int4_note, select_nodes
from onnxquant.pipeline.state import State, excluding


@timed("mixed_precision")
def mixed_precision(calibrated: State, run: RunData, max_drop: float) -> State:
    """The chosen model; the state's recipe excludes its float and int4 layers (the int8
    selection of this model), as the output's stamp says."""
    if not 0 <= max_drop < float("inf"):  # also nan
        raise UsageError(f"max_drop must be a finite number at least 0, got {max_drop}")
    int4, rejected = int4_candidates(calibrated)
    recipe = calibrated.recipe
    held = run.held_out(calibrated.model, recipe)
    full_model = build(calibrated, run).model
    full = (full_model, measure(full_model, held, run.metric))
    ranking: list[LayerSensitivity] = []
    if full[1].drop > max_drop or int4:
        ranking = rank(calibrated, run, held)

    def without(excluded: tuple[str, ...]) -> onnx.ModelProto:
        return build(calibrated, run, excluded=excluded).model

    result = search(without, ranking if full[1].drop > max_drop else [], held, max_drop, run.metric, full)
    result.ranking = ranking
    if int4:
        floats = set(result.float_layers)
        order = {s.node: (s.drop, s.cosine_drop, k) for k, s in enumerate(ranking)}
        candidates = sorted((n for n in int4 if n not in floats and n in order), key=lambda n: order[n])

        def with_int4(chosen: tuple[str, ...]) -> onnx.ModelProto:
            return build(calibrated, run, excluded=result.float_layers, int4=chosen).model

        result = widen_int4(with_int4, candidates, held, max_drop, run.metric, result)
    kept = f"mixed precision: {len(result.float_layers)} layer(s) kept float, drop {result.drop:.4f} within budget {max_drop}"
    if recipe.quantization.weight_bits == 4:
        kept += f"; {len(result.int4_layers)} of {len(int4)} int4 candidates given 4-bit weights"
    chosen = excluding(recipe, [*result.float_layers, *result.int4_layers])  # the int8 selection of this model
    state = replace(calibrated, model=result.model, recipe=chosen, mixed=result,
                    selection=select_nodes(calibrated.model, chosen, set(calibrated.not_float),
                                              calibrated.float_layers)).noted(kept)
    if recipe.target == "cpu":
        state = check_kernels(state)
    return int4_note(state, rejected)
