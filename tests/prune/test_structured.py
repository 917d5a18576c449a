import numpy as np
import onnx
from onnx import numpy_helper

from models.tiny import tiny_mbconv
from onnxquant.prune.structured import aligned, removable_layers, remove_dead_channels
from tests.conftest import run
from tests.prune.conftest import mbconv_samples


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {i.name: list(i.dims) for i in model.graph.initializer}


def _zero(model: onnx.ModelProto, name: str, channels: list[int], axis: int = 0) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            value = np.moveaxis(numpy_helper.to_array(init).copy(), axis, 0)
            value[channels] = 0
            init.CopyFrom(numpy_helper.from_array(np.moveaxis(value, 0, axis), name))


def _outputs(model: onnx.ModelProto) -> np.ndarray:
    return np.concatenate([run(model, s)[0] for s in mbconv_samples(4, seed=3)])


def test_dead_expand_channels_leave_the_expand_depthwise_and_project_layers_exactly():
    model = tiny_mbconv(dead=(1, 5, 9))
    before = _outputs(model)
    report = remove_dead_channels(model)
    onnx.checker.check_model(model)
    assert [(r.node, r.removed, r.total) for r in report.removed] == [("expand", 3, 16)]
    shapes = _shapes(model)
    assert shapes["w_expand"] == [13, 4, 1, 1] and shapes["w_dw"] == [13, 1, 3, 3] and shapes["w_project"] == [4, 13, 1, 1]
    group = next(a.i for n in model.graph.node if n.name == "depthwise" for a in n.attribute if a.name == "group")
    assert group == 13
    # The depthwise conv turns the zero channels into constants (its bias), folded into the project bias.
    np.testing.assert_allclose(_outputs(model), before, rtol=1e-5, atol=1e-5)


def test_batchnorm_pooling_and_flatten_are_followed_into_the_classifier():
    model = tiny_mbconv()
    _zero(model, "w_head", [2, 6])
    before = _outputs(model)
    report = remove_dead_channels(model)
    assert [(r.node, r.removed) for r in report.removed] == [("head", 2)]
    shapes = _shapes(model)
    assert shapes["bn_scale"] == [6] and shapes["fc"] == [5, 6]
    np.testing.assert_allclose(_outputs(model), before, rtol=1e-5, atol=1e-5)


def test_residual_adds_and_padding_leave_channels_and_say_why():
    model = tiny_mbconv()
    _zero(model, "w_project", [0])
    _zero(model, "w_expand", [3])  # its bias stays positive here: a constant meets zero padding
    for init in model.graph.initializer:
        if init.name == "b_expand":
            value = numpy_helper.to_array(init).copy()
            value[3] = 1.0
            init.CopyFrom(numpy_helper.from_array(value, "b_expand"))
    before = _outputs(model)
    report = remove_dead_channels(model)
    assert report.channels_removed == 0
    assert "residual" in report.kept["project"]
    assert "padding" in report.kept["expand"]
    np.testing.assert_array_equal(_outputs(model), before)


def test_removable_layers_are_those_whose_channels_can_go():
    assert removable_layers(tiny_mbconv()) == ["expand", "head"]


def test_a_layer_keeps_one_channel():
    model = tiny_mbconv()
    _zero(model, "w_head", list(range(8)))
    report = remove_dead_channels(model)
    assert report.removed[0].removed == 7 and _shapes(model)["w_head"][0] == 1


def test_alignment_keeps_some_dead_channels():
    assert aligned(96, 3, 16) == 0 and aligned(96, 20, 16) == 16 and aligned(100, 10, 16) == 4 and aligned(96, 3, 1) == 3
    model = tiny_mbconv(dead=(1, 5, 9))
    assert remove_dead_channels(model, multiple=8).channels_removed == 0
