"""A ConvTranspose whose kernel equals its stride is a 1x1 Conv and a DepthToSpace: the same
float outputs, and on the CPU target a QLinearConv whose pixel shuffle moves the integers
(no ConvTranspose, no DepthToSpace left in what onnxruntime runs)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxquant
import onnxquant.pipeline.rewrite
from onnxquant.passes.convtranspose_as_conv import convtranspose_as_conv
from onnxquant.recipe import Recipe

RECIPE = Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False})


def _upsampler(c_in: int, c_out: int, kernel: tuple[int, int] = (2, 2), bias: bool = True,
               activation: str | None = None, seed: int = 0, **attrs) -> onnx.ModelProto:
    """One ConvTranspose (stride = kernel unless ``attrs`` say otherwise), optionally followed
    by a Relu or Clip; dynamic batch, height and width."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((c_in, c_out // attrs.get("group", 1), *kernel))
                                     .astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        inputs.append("b")
    settings = {"kernel_shape": list(kernel), "strides": list(kernel), **attrs}
    nodes = [helper.make_node("ConvTranspose", inputs, ["up" if activation else "y"], name="up", **settings)]
    if activation == "Relu":
        nodes.append(helper.make_node("Relu", ["up"], ["y"], name="act"))
    elif activation == "Clip":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(0.7, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["up", "lo", "hi"], ["y"], name="act"))
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                          ["N", c_in, "H", "W"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", c_out, "H2", "W2"])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("c_in,c_out,k,bias,activation", [
    (24, 24, 2, True, "Relu"), (24, 1, 2, True, None), (5, 7, 4, False, None), (3, 6, 2, True, "Clip"),
    (16, 8, 4, True, "Relu"), (1, 3, 2, False, None),
])
def test_same_outputs_in_float(c_in, c_out, k, bias, activation):
    model = _upsampler(c_in, c_out, (k, k), bias, activation)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert convtranspose_as_conv(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["Conv", *([activation] if activation else []), "DepthToSpace"]
    assert {i.name for i in rewritten.graph.initializer} == {"up_weight", *(["up_bias"] if bias else []),
                                                            *(["lo", "hi"] if activation == "Clip" else [])}
    rng = np.random.default_rng(1)
    for shape in [(1, c_in, 5, 7), (2, c_in, 8, 3)]:
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        want, got = _run(model, feed), _run(rewritten, feed)
        assert got.shape == want.shape == (shape[0], c_out, shape[2] * k, shape[3] * k)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,attrs", [
    ((2, 2), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((2, 2), {"output_padding": [1, 1]}),
    ((2, 2), {"dilations": [2, 2]}),
    ((2, 2), {"group": 2}),
    ((3, 3), {"strides": [2, 2]}),  # overlapping windows
    ((2, 2), {"strides": [1, 1]}),
    ((2, 4), {}),  # DepthToSpace moves square blocks only
    ((1, 1), {}),
    ((2, 2), {"output_shape": [10, 14]}),
    ((2, 2), {"auto_pad": "SAME_UPPER"}),
])
def test_declines(kernel, attrs):
    model = _upsampler(4, 4, kernel, **attrs)
    before = model.SerializeToString()
    assert convtranspose_as_conv(model) == 0
    assert model.SerializeToString() == before


def test_the_activation_stays_after_the_shuffle_when_the_output_is_read_twice():
    model = _upsampler(4, 4, activation="Relu")
    model.graph.output.append(helper.make_tensor_value_info("up", onnx.TensorProto.FLOAT, None))
    assert convtranspose_as_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "DepthToSpace", "Relu"]


def _decoder() -> onnx.ModelProto:
    """A Conv, then two 2x2 stride-2 ConvTransposes (a Relu between: PP-OCR det's head) and a Conv."""
    rng = np.random.default_rng(2)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("wa", 8, 3, 3, 3), init("ba", 8), init("wt1", 8, 8, 2, 2), init("bt1", 8),
             init("wt2", 8, 4, 2, 2), init("bt2", 4), init("wd", 2, 4, 3, 3), init("bd", 2)]
    nodes = [
        helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="stem", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="stem_relu"),
        helper.make_node("ConvTranspose", ["a_relu", "wt1", "bt1"], ["t1"], name="up1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Relu", ["t1"], ["t1_relu"], name="up1_relu"),
        helper.make_node("ConvTranspose", ["t1_relu", "wt2", "bt2"], ["t2"], name="up2", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["t2", "wd", "bd"], ["out"], name="head", pads=[1] * 4),
    ]
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                               [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 2, "H2", "W2"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _samples(n: int = 8, size: tuple[int, int] = (16, 24)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"input": rng.standard_normal((1, 3, *size)).astype(np.float32)} for _ in range(n)]


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_cpu_target_runs_them_as_integer_convs_and_moves_the_integers(monkeypatch, tmp_path):
    model = _decoder()
    result = onnxquant.quantize(model, _samples(), RECIPE)
    ops = [n.op_type for n in result.model.graph.node]
    assert "ConvTranspose" not in ops and "DepthToSpace" not in ops
    assert any("2 ConvTranspose(s) with kernel == stride" in note for note in result.notes)
    assert any("2 DepthToSpace(s) move the int8 tensor" in note for note in result.notes)
    running = _optimized_ops(result.model, tmp_path)
    # (the head writes the graph output: float compute)
    assert running.count("QLinearConv") == 3 and "ConvTranspose" not in running and "DepthToSpace" not in running
    # channels-last from the stem to the head: a Transpose in, one per shuffle, one out; those the
    # shuffles are written with cancel against the QLinearConvs'
    assert running.count("Transpose") == 4
    # the shuffle on the integers is exactly onnxruntime's DepthToSpace of the same integers
    with monkeypatch.context() as patch:
        patch.setattr(onnxquant.pipeline.rewrite, "shuffle_integers", lambda model: 0)
        with_depth_to_space = onnxquant.quantize(model, _samples(), RECIPE).model
    assert [n.op_type for n in with_depth_to_space.graph.node].count("DepthToSpace") == 2
    for feed in [*_samples(2), *_samples(2, size=(24, 40))]:  # two sizes: the shapes are computed
        np.testing.assert_array_equal(_run(result.model, feed), _run(with_depth_to_space, feed))
    # and close to the float model (a quantized model's error, not a wrong shuffle)
    feed = _samples(1)[0]
    want = _run(model, feed)
    assert np.abs(_run(result.model, feed) - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.parametrize("recipe", [replace(RECIPE, target="qnn"),
                                    RECIPE.with_overrides(quantization={"op_types": ["Conv", "Relu"]}),
                                    RECIPE.with_overrides(quantization={"activation_type": "int8"})])
def test_left_alone_off_the_cpu_target_without_depth_to_space_or_with_int8_activations(recipe):
    from onnxquant.pipeline.prepare import _integer_upsampling

    assert not _integer_upsampling(recipe)
    assert _integer_upsampling(RECIPE)


def test_qnn_target_keeps_the_convtranspose():
    result = onnxquant.quantize(_decoder(), _samples(), replace(RECIPE, target="qnn"))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("ConvTranspose") == 2 and "DepthToSpace" not in ops
    assert not any("kernel == stride" in note for note in result.notes)


def _upsampling_block(middle: str) -> onnx.ModelProto:
    """Conv, Relu, a 2x2 stride-2 ConvTranspose or a DCR DepthToSpace by 2, Conv, Relu."""
    rng = np.random.default_rng(4)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("wa", 16, 3, 3, 3), init("ba", 16), init("wd", 2, 4, 3, 3), init("bd", 2)]
    if middle == "ConvTranspose":
        inits += [init("wt", 16, 4, 2, 2), init("bt", 4)]
        up = helper.make_node("ConvTranspose", ["a_relu", "wt", "bt"], ["t"], name="up", kernel_shape=[2, 2],
                              strides=[2, 2])
    else:
        up = helper.make_node("DepthToSpace", ["a_relu"], ["t"], name="up", blocksize=2, mode="DCR")
    nodes = [helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="stem", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["a_relu"], name="stem_relu"), up,
             helper.make_node("Conv", ["t", "wd", "bd"], ["h"], name="head", pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["out"], name="head_relu")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                             ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 2, "H2", "W2"])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("middle", ["ConvTranspose", "DepthToSpace"])
def test_int8_activations_keep_the_convs_quantized(middle):
    """With int8 activations onnxruntime's x86 provider converts each Q -> DQ pair to uint8; a
    reshuffle of the integers between would break the pairs and send the Convs float."""
    result = onnxquant.quantize(_upsampling_block(middle), _samples(),
                                RECIPE.with_overrides(quantization={"activation_type": "int8"}))
    nodes = list(result.model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert [n.name for n in convs] == ["stem", "head"]
    for conv in convs:  # input and weight dequantized: a QLinearConv
        assert all(producer[name].op_type == "DequantizeLinear" for name in conv.input[:2]), conv.name
    assert [n.op_type for n in nodes].count(middle) == 1 and "Transpose" not in [n.op_type for n in nodes]


def _in_a_branch(reads: str) -> onnx.ModelProto:
    """``_upsampler`` with a Relu after it and an If whose then-branch reads ``reads`` (the weight
    or the ConvTranspose's output) from the outer scope."""
    model = _upsampler(4, 4, activation="Relu")
    shape = [4, 4, 2, 2] if reads == "w" else ["N", 4, "H2", "W2"]
    then = helper.make_graph([helper.make_node("Identity", [reads], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, shape)])
    other = helper.make_graph([helper.make_node("Identity", ["y"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["c"], ["z"], name="branch", then_branch=then, else_branch=other))
    model.graph.input.append(helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("reads", ["w", "up"])
def test_a_convtranspose_a_branch_reads_from_stays(reads):
    model = _in_a_branch(reads)
    assert convtranspose_as_conv(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Relu", "If"]
    feed = {"x": np.ones((1, 4, 3, 3), np.float32), "c": np.array(True)}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert session.run(None, feed)[1].shape == ((4, 4, 2, 2) if reads == "w" else (1, 4, 6, 6))


def test_the_moved_activation_drops_the_old_outputs_shape():
    model = _upsampler(4, 4, activation="Relu")
    model.graph.value_info.append(helper.make_tensor_value_info("up", onnx.TensorProto.FLOAT, ["N", 4, "H2", "W2"]))
    assert convtranspose_as_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "DepthToSpace"]
    assert "up" not in {v.name for v in model.graph.value_info}
    onnx.checker.check_model(model, full_check=True)
