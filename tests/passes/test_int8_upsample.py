"""A nearest Resize by whole factors between integer kernels becomes a channels-last copy of the
integers: the same output to the bit, no Resize left, and onnxruntime cancels the Transposes it
is written with (the whole block runs channels-last)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxquant
import onnxquant.pipeline.rewrite
from onnxquant.passes.int8_upsample import _dcr_block, _whole_factors, upsample_integers
from onnxquant.recipe import Recipe

RECIPE = Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False})


def _fpn(resize: dict | None = None, scale: float = 2.0, stem: bool = True) -> onnx.ModelProto:
    """A strided Conv upsampled back and added to a full-size Conv (an FPN's top-down step), then
    upsampled by 4 into a head Conv; dynamic height and width. ``resize``: the first Resize's
    attributes; ``stem=False``: the first Resize reads the graph input."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    attrs = resize if resize is not None else {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                              "nearest_mode": "floor"}
    inits = [init("wa", 8, 3, 3, 3), init("ba", 8), init("wb", 8, 3, 3, 3), init("bb", 8),
             init("wc", 4, 8, 1, 1), init("bc", 4), init("wd", 2, 4, 3, 3), init("bd", 2),
             numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "up"),
             numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "up4")]
    first = (["coarse_relu"] if stem else ["input"]) + ["", "up"]
    nodes = [
        helper.make_node("Conv", ["input", "wa", "ba"], ["coarse"], name="coarse", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["coarse"], ["coarse_relu"], name="coarse_relu"),
        helper.make_node("Resize", first, ["up_coarse"], name="upsample", **attrs),
        helper.make_node("Conv", ["input", "wb", "bb"], ["fine"], name="fine", pads=[1] * 4),
        helper.make_node("Add", ["up_coarse", "fine"] if stem else ["fine", "fine"], ["merged"], name="merge"),
        helper.make_node("Conv", ["merged", "wc", "bc"], ["reduced"], name="reduce", strides=[4, 4]),
        helper.make_node("Resize", ["reduced", "", "up4"], ["up_reduced"], name="upsample4", mode="nearest",
                         coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
        helper.make_node("Conv", ["up_reduced", "wd", "bd"], ["out"], name="head", pads=[1] * 4),
    ]
    if not stem:  # the graph input upsampled, read by a Conv
        nodes[3] = helper.make_node("Conv", ["up_coarse", "wb", "bb"], ["fine"], name="fine", pads=[1] * 4)
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                           [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 2, "H2", "W2"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _samples(n: int = 8, size: tuple[int, int] = (16, 24)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((1, 3, *size)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    """Op types of the graph onnxruntime runs at its default level (channels-last layout included)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


@pytest.fixture
def without_pass(monkeypatch: pytest.MonkeyPatch):
    """``quantize`` as it was before the pass."""
    def run(model: onnx.ModelProto) -> onnx.ModelProto:
        with monkeypatch.context() as patch:
            patch.setattr(onnxquant.pipeline.rewrite, "upsample_integers", lambda model: 0)
            return onnxquant.quantize(model, _samples(), RECIPE).model
    return run


def test_same_integers_no_resize_and_no_transpose_left(without_pass, tmp_path):
    model = _fpn()
    result = onnxquant.quantize(model, _samples(), RECIPE)
    before = without_pass(model)
    assert [n.op_type for n in result.model.graph.node].count("Resize") == 0
    assert [n.op_type for n in before.graph.node].count("Resize") == 2
    assert any("2 nearest Resize(s) by whole factors" in note for note in result.notes)
    for feed in [*_samples(2), *_samples(2, size=(24, 40))]:  # two sizes: the shapes are computed
        np.testing.assert_array_equal(_run(result.model, feed), _run(before, feed))
    ops, ops_before = _optimized_ops(result.model, tmp_path), _optimized_ops(before, tmp_path)
    assert "Resize" not in ops and ops.count("Expand") == 2
    # channels-last from the first QLinearConv to the last: the Transposes it was written with are gone
    assert ops.count("Transpose") == ops_before.count("Transpose")
    assert ops.count("QLinearAdd") == 1


def test_compact_keeps_the_rank_of_the_reshape():
    """onnxruntime cannot infer the rank of a Reshape to a computed shape; without it the
    Transposes around the Add after would stay."""
    model = onnxquant.quantize(_fpn(), _samples(), RECIPE).model
    reshaped = {n.output[0] for n in model.graph.node if n.op_type == "Reshape"}
    recorded = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    assert len(reshaped) == 2 and all(recorded.get(name) == 4 for name in reshaped)


@pytest.mark.parametrize("attrs,scale", [
    ({"mode": "linear"}, 2.0),
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, 2.0),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_ceil"}, 2.0),
])
def test_inexact_resizes_stay(attrs, scale):
    model = onnxquant.quantize(_fpn(attrs, scale), _samples(), RECIPE).model
    kept = [n.name for n in model.graph.node if n.op_type == "Resize"]
    assert kept == ["upsample"]  # the 4x half-pixel one still goes


@pytest.mark.parametrize("scales,factors", [([1, 1, 2, 3], (2, 3)), ([1, 1, 1.5, 2], None), ([1, 2, 2, 2], None),
                                            ([1, 1, 1, 1], None), ([1, 1, 2], None)])
def test_only_whole_spatial_factors(scales, factors):
    resize = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    inits = {"s": numpy_helper.from_array(np.array(scales, np.float32), "s")}
    assert _whole_factors(resize, inits) == factors


def test_a_resize_no_integer_conv_feeds_stays():
    """Upsampling the graph input: onnxruntime runs that part channels-first, where its uint8
    Resize by 2 is fast and the Transposes would stay."""
    model = onnxquant.quantize(_fpn(stem=False), _samples(), RECIPE).model
    assert [n.name for n in model.graph.node if n.op_type == "Resize"] == ["upsample"]


def test_old_opset_is_left_alone(without_pass):
    model = without_pass(_fpn())
    old = onnx.ModelProto.FromString(model.SerializeToString())
    old.opset_import[0].version = 10
    assert upsample_integers(old) == 0
    assert upsample_integers(model) == 2


@pytest.mark.parametrize("attrs,block", [({"blocksize": 2}, 2), ({"blocksize": 4, "mode": "DCR"}, 4),
                                         ({"blocksize": 2, "mode": "CRD"}, None), ({"blocksize": 1}, None)])
def test_only_dcr_pixel_shuffles_move_channels_last(attrs, block):
    """DCR's channel blocks are whole pixels channels-last (one Transpose of blocks moves them);
    CRD's are not (tests/passes/test_convtranspose_as_conv.py checks the move against DepthToSpace)."""
    assert _dcr_block(helper.make_node("DepthToSpace", ["x"], ["y"], **attrs), {}) == block


def test_int8_activations_leave_the_resizes(monkeypatch):
    """With int8 activations onnxruntime's x86 provider converts each Q -> DQ pair to uint8; the
    repeat between would break the pairs and send the neighbours float (all of them here)."""
    recipe = RECIPE.with_overrides(quantization={"activation_type": "int8"})
    result = onnxquant.quantize(_fpn(), _samples(), recipe).model
    with monkeypatch.context() as patch:
        patch.setattr(onnxquant.pipeline.rewrite, "upsample_integers", lambda model: 0)
        before = onnxquant.quantize(_fpn(), _samples(), recipe).model
    ops = [n.op_type for n in result.graph.node]
    assert ops == [n.op_type for n in before.graph.node]
    assert ops.count("Resize") == 2 and ops.count("QuantizeLinear") > 0
