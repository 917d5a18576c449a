from dataclasses import replace

from models.tiny import tiny_cnn
from onnxquant.pipeline.search import _edge_layers
from onnxquant.pipeline.state import State
from onnxquant.planner import select
from onnxquant.recipe import Recipe
from onnxquant.search.candidates import Rounds


def test_the_first_layers_are_also_kept_float_two_deep():
    rounds = Rounds(Recipe(), first=("stem",), heads=("fc",), following=("dw0",))
    names = {c.name: c.keep_float for c in rounds.float_layers()}
    assert names == {"last 1 layer(s) float": ("fc",), "first 1 layer(s) float": ("stem",),
                     "first and last 2 layer(s) float": ("stem", "fc"),
                     "first 2 layer(s) float (two deep)": ("stem", "dw0")}
    assert all("two deep" not in c.name for c in Rounds(Recipe(), first=("stem",)).float_layers())
    # a recipe that picks its own layers gets no float-layer candidates
    picked = Recipe().with_overrides(nodes={"include": ("stem",)})
    assert Rounds(picked, first=("stem",), following=("dw0",)).float_layers() == []


def test_edge_layers_walk_from_the_inputs_one_weighted_layer_further():
    model = tiny_cnn()
    state = replace(State(model=model, recipe=Recipe()), selection=select(model, Recipe()))
    first, heads, following = _edge_layers(state)
    assert first == ("conv1",)
    # through conv1's Relu to the depthwise Conv, and along the residual branch to the classifier;
    # never past another weighted layer (pwconv comes after dwconv)
    assert following == ("dwconv", "fc")
    assert "pwconv" not in following
