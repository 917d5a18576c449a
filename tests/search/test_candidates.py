from dataclasses import replace

from models.tiny import tiny_cnn
from onnxquant.pipeline.search import _edge_layers
from onnxquant.pipeline.state import State
from onnxquant.planner import select
from onnxquant.recipe import Recipe, recipe_for_target
from onnxquant.search.candidates import FLOAT_COMPUTE, Rounds


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


def test_lstm_models_get_a_float_compute_candidate_on_the_cpu_only():
    rounds = Rounds(Recipe())
    (candidate,) = rounds.recurrent_float(Recipe(), has_lstm=True)
    assert candidate.apply(Recipe()).quantization.recurrent_integer is False
    assert rounds.recurrent_float(Recipe(), has_lstm=False) == []
    # the user's own choice, and NPU targets (no DynamicQuantizeLSTM there), are left alone
    chosen = Recipe().with_overrides(quantization={"recurrent_integer": True})
    assert rounds.recurrent_float(chosen, has_lstm=True) == []
    from onnxquant.recipe import recipe_for_target
    assert Rounds(recipe_for_target("qnn")).recurrent_float(recipe_for_target("qnn"), has_lstm=True) == []


def test_float_compute_is_tried_only_where_it_costs_no_speed_and_the_kernels_are_left_to_the_search():
    assert [c.name for c in Rounds(Recipe()).float_compute(True)] == [FLOAT_COMPUTE]
    changed = Rounds(Recipe()).float_compute(True)[0].apply(Recipe())
    assert changed.quantization.integer_compute is False
    assert Rounds(Recipe()).float_compute(False) == []
    for chosen in (True, False):  # the user's choice of kernels is kept
        assert Rounds(Recipe().with_overrides(quantization={"integer_compute": chosen})).float_compute(True) == []
    assert Rounds(recipe_for_target("qnn")).float_compute(True) == []  # the CPU target only


def test_a_tighter_percentile_is_tried_only_after_the_search_chose_the_percentile_estimator():
    from onnxquant.search.candidates import TIGHTER_PERCENTILE

    percentile = Recipe().with_overrides(calibration={"method": "percentile"})
    (candidate,) = Rounds(Recipe()).tighter_percentile(percentile)
    tighter = candidate.apply(percentile).calibration
    assert (tighter.method, tighter.percentile) == ("percentile", TIGHTER_PERCENTILE)
    assert tighter.percentile < percentile.calibration.percentile
    assert Rounds(Recipe()).tighter_percentile(Recipe()) == []  # minmax (or entropy, mse) won
    # the user's own estimator or level is kept
    assert Rounds(percentile).tighter_percentile(percentile) == []
    own_level = Recipe().with_overrides(calibration={"method": "percentile", "percentile": 99.9})
    assert Rounds(Recipe()).tighter_percentile(own_level) == []
