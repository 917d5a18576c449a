"""What TF-Lite exports (tflite2onnx, tf2onnx) write that onnxquant must handle, on models built in
code: a residual block whose skip path pads channels with zeros (BlazeFace), and a regression head
Conv that writes a graph output and holds most of the weights (MediaPipe's face mesh)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from models.tiny import _init, _model
from onnxquant.float_weights import float_weighted_nodes
from onnxquant.passes.prepare import prepare_model
from onnxquant.planner import node_names, select
from onnxquant.recipe import recipe_for_target
from tests.conftest import run

INTEGER = recipe_for_target("cpu-avx2").with_overrides(quantization={"integer_compute": True}, search={"enabled": False})


def _channel_padding_block(pad_value: float | None = None) -> onnx.ModelProto:
    """Conv(3->8)+Relu, then a residual block widening 8 -> 12 channels: the skip path is a Pad of
    4 zero channels (tflite2onnx's ``channel_padding``), added to a 1x1 Conv, then Relu, then a last
    Conv. ``pad_value``: the Pad's constant (None: the default 0, no input)."""
    rng = np.random.default_rng(0)
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64), "pads")
    pad_inputs = ["r1", "pads"] + (["pad_value"] if pad_value is not None else [])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Pad", pad_inputs, ["skip"], name="channel_padding", mode="constant"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["skip", "c2"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3")]
    inits = [_init("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
             _init("w2", rng.normal(0, 0.3, (12, 8, 1, 1))), _init("b2", rng.normal(0, 0.1, 12)),
             _init("w3", rng.normal(0, 0.3, (6, 12, 1, 1))), _init("b3", rng.normal(0, 0.1, 6)), pads]
    if pad_value is not None:
        inits.append(numpy_helper.from_array(np.array(pad_value, np.float32), "pad_value"))
    graph = helper.make_graph(nodes, "channel_padding",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    return _model(graph, opset=13)


def _images(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def test_a_zero_channel_pad_joins_the_integer_graph_without_a_float_island():
    model = _channel_padding_block()
    result = onnxquant.quantize(model, _images(16), INTEGER)
    assert result.quantized_nodes.get("Pad") == 1 and result.quantized_nodes.get("Add") == 1
    # padded as integers: the Pad reads the int8 tensor, no DequantizeLinear -> Pad -> QuantizeLinear
    producer = {o: n for n in result.model.graph.node for o in n.output}
    (pad,) = [n for n in result.model.graph.node if n.op_type == "Pad"]
    assert producer[pad.input[0]].op_type == "QuantizeLinear"
    assert result.fusion is not None and result.fusion.round_trips == []
    # conv1 and conv2 as integer kernels; conv3 writes the graph output (int8 weights, float kernel)
    assert result.fusion.integer_layers == result.fusion.quantized_layers == 2 and "conv3" in result.weight_only
    for sample in _images(4, seed=7):
        ref, got = run(model, sample)[0], run(result.model, sample)[0]
        assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()


def test_a_pad_of_another_value_stays_float_with_its_reason():
    prepared, _ = prepare_model(_channel_padding_block(pad_value=0.5), simplify=False)
    node_names(prepared)
    selection = select(prepared, INTEGER)
    assert "not exact" in selection.float_nodes["channel_padding"][1] and "channel_padding" not in selection.quantized
    result = onnxquant.quantize(_channel_padding_block(pad_value=0.5), _images(16), INTEGER)
    assert "Pad" not in result.quantized_nodes
    sample = _images(1, seed=5)[0]
    ref, got = run(_channel_padding_block(pad_value=0.5), sample)[0], run(result.model, sample)[0]
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()


def _regression_head() -> onnx.ModelProto:
    """A small Conv + PRelu trunk, then a 1x1 Conv head writing the graph output with most of the
    weights (1404 landmark coordinates, as MediaPipe's face mesh ends)."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="trunk", strides=[4, 4]),
             helper.make_node("PRelu", ["c1", "alpha"], ["p1"], name="prelu"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["landmarks"], name="head")]
    inits = [_init("w1", rng.normal(0, 0.3, (16, 3, 4, 4))), _init("b1", rng.normal(0, 0.1, 16)),
             _init("alpha", np.full((16, 1, 1), 0.25)),
             _init("w2", rng.normal(0, 0.1, (1404, 16, 2, 2))), _init("b2", rng.normal(0, 1, 1404))]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, 1404, 1, 1])], inits)
    return _model(graph, opset=13)


def test_a_conv_writing_a_graph_output_stores_int8_weights_for_a_float_kernel():
    model = _regression_head()
    result = onnxquant.quantize(model, _images(8), INTEGER)
    assert "head" in result.weight_only and "graph output" in result.weight_only["head"]
    assert "head" not in {n.name for n in result.float_nodes}
    # the head's 1404 per-channel scales (its Cast * scale Mul) are no float weighted layer; only
    # the head's bias (1404 values) is still read as float
    left = float_weighted_nodes(result.model)
    assert [(w.node, [list(t.dims) for t in w.weights]) for w in left] == [("head", [[1404]])]
    assert len(result.model.SerializeToString()) < 0.3 * len(model.SerializeToString())
    for sample in _images(4, seed=9):
        ref, got = run(model, sample)[0], run(result.model, sample)[0]
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_copying_pads_are_exact_at_the_input_scale(mode: str):
    model = _channel_padding_block()
    for node in model.graph.node:
        if node.op_type == "Pad":
            node.attribute[0].s = mode.encode()
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    model.graph.initializer[2].CopyFrom(_init("w2", np.random.default_rng(3).normal(0, 0.3, (8, 8, 1, 1))))
    model.graph.initializer[3].CopyFrom(_init("b2", np.zeros(8)))
    model.graph.node[3].attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])
    model.graph.initializer[4].CopyFrom(_init("w3", np.random.default_rng(4).normal(0, 0.3, (6, 8, 1, 1))))
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 10
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 10
    onnx.checker.check_model(model, full_check=True)
    result = onnxquant.quantize(model, _images(16), INTEGER)
    assert result.quantized_nodes.get("Pad") == 1 and result.fusion.round_trips == []
    sample = _images(1, seed=5)[0]
    ref, got = run(model, sample)[0], run(result.model, sample)[0]
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()


def test_a_dequantize_an_if_body_still_reads_is_kept_by_the_int8_pad():
    """The DQ before the Pad also feeds a branch (an outer-scope read): padding the integers must
    keep it, or the model reads a value nothing produces."""

    from onnxquant.passes.int8_pad import pad_integers

    def body(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Relu", ["xf"], [f"{name}_o"], name=f"{name}_relu")], name, [],
                                 [helper.make_tensor_value_info(f"{name}_o", TensorProto.FLOAT, [1, 2, 2, 2])])

    nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dq"),
             helper.make_node("Pad", ["xf", "pads"], ["p"], name="pad"),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], name="q"),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"], name="dq2"),
             helper.make_node("If", ["c"], ["o"], name="if", then_branch=body("then"), else_branch=body("else"))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 2, 2, 2]),
                     helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4]),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 2, 2, 2])],
        [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z"),
         numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert pad_integers(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert "xf" in {o for n in model.graph.node for o in n.output}
