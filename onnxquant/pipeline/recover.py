"""Stage ``recover``: the accuracy-recovery passes that need the final scales (learned rounding,
bias correction); they change the planned model's weights."""
from __future__ import annotations

import onnx

from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.recovery.pipeline import after_plan


@timed("recover")
def recover(state: State, run: RunData, float_source: onnx.ModelProto | None = None) -> State:
    """The planned model with its weights adjusted in place, as the recipe's recovery settings say.
    ``float_source``: the calibrated model the plan copied, left as it is (the rounding passes'
    float originals refer to it instead of copying it)."""
    recipe = state.planning_recipe
    measured = state.measured_shifts
    if measured is not None:  # (its sums hold only over the same samples, fitted to the model the same way)
        measured = measured.over(run.calib_data, repr((state.recipe.preprocess, recipe.calibration.max_samples)))
    factors = state.gptq_factors
    if factors is not None:
        factors = factors.over(run.calib_data, repr((state.recipe.preprocess, recipe.calibration.max_samples)))
    return state.noted(*after_plan(state.model, state.plan, recipe, run.reopener(state.model, state.recipe),
                                   run.unavailable, measured, factors, float_source))
