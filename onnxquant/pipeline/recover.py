"""Stage ``recover``: the accuracy-recovery passes that need the final scales (learned rounding,
bias correction); they change the planned model's weights."""
from __future__ import annotations

from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.recovery.pipeline import after_plan


@timed("recover")
def recover(state: State, run: RunData) -> State:
    """The planned model with its weights adjusted in place, as the recipe's recovery settings say."""
    return state.noted(*after_plan(state.model, state.plan, state.planning_recipe,
                                   run.reopener(state.model, state.recipe), run.unavailable))
