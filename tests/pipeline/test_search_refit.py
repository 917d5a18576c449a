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
