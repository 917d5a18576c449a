"""The recipe search calibrates its chosen recipe again on every sample: the searched model is the
model of that recipe without the search (statistics from all samples, not the kept three quarters)."""
from __future__ import annotations

import onnx
from onnx import numpy_helper

import onnxquant
from models.tiny import image_samples, tiny_cnn
from onnxquant.recipe import recipe_from_dict, recipe_of


def _weights_and_ranges(model: onnx.ModelProto) -> dict[str, bytes]:
    return {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}


def test_the_searched_model_is_its_chosen_recipe_calibrated_on_every_sample():
    samples = image_samples(32)
    searched = onnxquant.quantize(tiny_cnn(), samples)
    assert searched.search["calibration_samples"] == 24  # the trials: three quarters
    assert searched.samples == 32  # the chosen recipe: all of them
    stamped = recipe_of(searched.model)
    stamped.pop("cpu", None)  # the CPU kind the stamp records: this host's, as Recipe() finds it again
    chosen = recipe_from_dict(stamped).with_overrides(search={"enabled": False})
    again = onnxquant.quantize(tiny_cnn(), samples, chosen)
    assert _weights_and_ranges(searched.model) == _weights_and_ranges(again.model)
    assert [n.op_type for n in searched.model.graph.node] == [n.op_type for n in again.model.graph.node]


def test_the_search_lets_the_calibrated_state_go_before_the_refit_makes_a_new_float_model():
    """Memory: at the refit, the calibrated model the trials planned from is no longer held (on
    all-MiniLM-L6-v2 it was a float model's worth more at the run's peak)."""
    import gc
    import weakref

    from onnxquant.api import _pruned
    from onnxquant.pipeline.calibrate import calibrate
    from onnxquant.pipeline.run_data import RunData
    from onnxquant.pipeline.search import search, split_for_search
    from onnxquant.pipeline.smooth import smooth

    recipe = onnxquant.Recipe()
    run = RunData(calib_data=image_samples(32))
    pruned = _pruned(tiny_cnn(), recipe, run)
    split = split_for_search(pruned, run, saved_stats=False, max_drop=None)
    calibrated = calibrate(smooth(pruned, split.run), split.run, histograms=True)
    del pruned
    still_held: list[bool] = []

    def float_model():
        gc.collect()
        still_held.append(planned_from() is not None)
        return _pruned(tiny_cnn(), recipe, run)

    planned_from = weakref.ref(calibrated)
    handed = [calibrated]
    del calibrated
    searched = search(handed, split, run, False, float_model)
    assert handed == [] and searched.search.chosen
    assert still_held and still_held[-1] is False  # the last call: the refit's
