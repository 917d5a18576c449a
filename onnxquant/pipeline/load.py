"""Stage ``load``: the input model, checked, with its size, and the input shapes it will be fixed to."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from onnxquant.calibration.feeds import input_specs
from onnxquant.errors import UsageError
from onnxquant.model_io import check_contents, check_model, file_size, load_model, model_size
from onnxquant.passes.compact import model_names
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.planner import unmatched_patterns
from onnxquant.recipe import Recipe
from onnxquant.shapes import has_free_dims


@timed("load")
def load(model: onnx.ModelProto | str | os.PathLike, recipe: Recipe, run: RunData) -> State:
    """A caller's ModelProto is checked and left as it is (prepare copies it); a file is loaded."""
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        check_contents(model)
        loaded, source = model, None
    else:
        loaded, source = load_model(model), Path(model)
    size_before = file_size(source, loaded) if source else model_size(loaded)
    return State(model=loaded, recipe=recipe, source=source, size_before=size_before, owned=source is not None,
                 shapes=_fixed_shapes(loaded, recipe, run), input_names=frozenset(model_names(loaded)),
                 input_matched=_matched(loaded, recipe))


def _matched(model: onnx.ModelProto, recipe: Recipe) -> frozenset[tuple[str, str]]:
    """(key, pattern) of the recipe's node patterns that select a node of ``model``."""
    nodes = recipe.nodes
    every = {("include", p) for p in nodes.include} | {("exclude", p) for p in nodes.exclude} | \
        {("uint8_weights", p) for p in nodes.uint8_weights}
    return frozenset(every - set(unmatched_patterns(model, nodes))) if every else frozenset()


def _fixed_shapes(model: onnx.ModelProto, recipe: Recipe, run: RunData) -> dict[str, tuple[int, ...]]:
    """The recipe's input shapes; for fixed-shape targets, free dims come from the first sample."""
    shapes = recipe.shapes
    if not recipe.every_op or not has_free_dims(model, given=shapes):
        return shapes
    first = next(iter(run.samples(model, recipe)), None) if run.rereadable else None  # a reader cannot be read twice
    if first is None:
        raise UsageError(f"target {recipe.target!r} compiles for fixed input shapes and the model has free dims: "
                         "give --input-shape NAME=D1,D2,... for each input")
    specs = input_specs(model)
    return {**{s.name: tuple(np.asarray(first[s.name]).shape) for s in specs if s.name in first}, **shapes}
