"""Stage ``prune``: zero (or remove) weights as ``recipe.prune`` says; with ``max_drop``, at the
largest amount whose drop on the held-out samples stays within the budget."""
from __future__ import annotations

from dataclasses import replace

import onnx

from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.prune.pipeline import PruneReport, prune_model, pruning_grams, wanda_norms, with_amount
from onnxquant.prune.search import search_amount, upper_amount


@timed("prune")
def prune(state: State, run: RunData) -> State:
    """The prepared model pruned in place (nothing to do when the recipe does not prune)."""
    recipe, prepared = state.recipe, state.model
    settings = recipe.prune
    if not settings.enabled:
        return state
    samples = (lambda: run.samples(prepared, recipe)) if run.rereadable else None
    max_samples = recipe.calibration.max_samples
    if settings.max_drop is None:
        report = prune_model(prepared, settings, samples, max_samples, progress=run.progress)
    else:
        held = run.held_out(prepared, recipe)
        rms = wanda_norms(prepared, settings, samples, max_samples)
        grams = pruning_grams(prepared, settings, samples, max_samples)

        def pruned(amount: float) -> tuple[onnx.ModelProto, PruneReport]:
            work = onnx.ModelProto()
            work.CopyFrom(prepared)
            return work, prune_model(work, with_amount(settings, amount), samples, max_samples, rms=rms, grams=grams)

        found = search_amount(pruned, held, settings.max_drop, upper_amount(settings), run.metric)
        prepared.CopyFrom(found.model)
        found.report.search = found.to_dict()
        report = found.report
    notes = ["pruning: " + report.summary(), *(f"pruning: {note}" for note in report.notes)]
    return replace(state, pruning=report, notes=(*state.notes, *notes))
