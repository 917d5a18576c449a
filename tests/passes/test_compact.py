"""The compact pass drops recorded shapes and default attributes, shares identical generated
initializers and shortens generated names, and onnxruntime runs the same graph: outputs equal to
the bit, the same kernels."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
import onnxquant.api
from models.tiny import image_samples, tiny_cnn
from models.tiny_control_flow import if_samples, tiny_if_network
from onnxquant.fusion_check import check_fusion
from onnxquant.passes.compact import compact, model_names
from onnxquant.recipe import recipe_for_target
from tests.test_conv_cost import _cnn, _samples


@pytest.fixture
def uncompacted(monkeypatch: pytest.MonkeyPatch):
    """``quantize`` as it was before the compact stage: what the pass is given."""
    monkeypatch.setattr(onnxquant.api, "compact", lambda state: state)

    def run(model: onnx.ModelProto, samples: list[dict], target: str = "cpu-vnni", **quantization) -> onnx.ModelProto:
        recipe = recipe_for_target(target).with_overrides(search={"enabled": False}, quantization=quantization)
        return onnxquant.quantize(model, samples, recipe).model

    return run


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if optimized is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _same_run(before: onnx.ModelProto, after: onnx.ModelProto, samples: list[dict], tmp_path: Path) -> None:
    """Outputs equal to the bit, and onnxruntime's optimized graph has the same ops."""
    first, second = _session(before, tmp_path / "before.onnx"), _session(after, tmp_path / "after.onnx")
    for sample in samples:
        for a, b in zip(first.run(None, sample), second.run(None, sample)):
            assert np.array_equal(a, b)
    ran = [Counter((n.op_type, n.domain) for n in onnx.load(str(tmp_path / f"{p}.onnx")).graph.node)
           for p in ("before", "after")]
    assert ran[0] == ran[1]


def test_qdq_model_shrinks_and_runs_the_same(uncompacted, tmp_path: Path):
    model = tiny_cnn()
    samples = image_samples(4)
    quantized = uncompacted(model, samples)
    assert len(quantized.graph.value_info) > 0  # the rule has something to do
    after = _copy(quantized)
    result = compact(after, model_names(model))
    assert result.value_info == len(quantized.graph.value_info) and not after.graph.value_info
    assert result.renamed > 0 and result.bytes_after < result.bytes_before == quantized.ByteSize()
    _same_run(quantized, after, samples, tmp_path)
    fused = [check_fusion(m) for m in (quantized, after)]
    assert (fused[0].quantized_layers, fused[0].integer_layers) == (fused[1].quantized_layers, fused[1].integer_layers)
    assert fused[1].integer_layers == fused[1].quantized_layers > 0
    # every name of the input that the rewrite left is still there; the names onnxquant made up are short
    assert model_names(model) & model_names(quantized) <= model_names(after)
    assert {n.name for n in model.graph.node} <= model_names(after)
    made = model_names(after) - model_names(model)
    assert made and all(len(name) <= 4 for name in made)


def test_identical_scales_and_zero_points_are_stored_once(uncompacted, tmp_path: Path):
    model = tiny_cnn()
    samples = image_samples(4)
    quantized = uncompacted(model, samples)
    after = _copy(quantized)
    result = compact(after, model_names(model))
    assert result.shared > 0
    assert len(after.graph.initializer) == len(quantized.graph.initializer) - result.shared
    qparams = {name for n in after.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input[1:]}
    contents = Counter(_content(t) for t in after.graph.initializer if t.name in qparams)
    assert max(contents.values()) == 1
    _same_run(quantized, after, samples, tmp_path)


def test_equal_integer_weights_of_two_layers_stay_two(tmp_path: Path):
    """Two Convs with the same int8 weight values (as the hard-swish gate Convs have): the fusion
    check counts each layer by its weight tensor, so the int8 weights are not shared (their
    equal scales and zero points are)."""
    weight = np.random.default_rng(0).integers(-127, 128, (3, 3, 1, 1)).astype(np.int8)

    def qdq(x: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [x, f"{out}_s", f"{out}_z"], [f"{out}_q"], name=f"{out}_Q"),
                helper.make_node("DequantizeLinear", [f"{out}_q", f"{out}_s", f"{out}_z"], [out], name=f"{out}_DQ")]

    nodes = [*qdq("x", "xd"),
             helper.make_node("DequantizeLinear", ["wa_q", "wa_s"], ["wa"], name="wa_DQ", axis=0),
             helper.make_node("Conv", ["xd", "wa"], ["a"], name="conv_a"), *qdq("a", "ad"),
             helper.make_node("DequantizeLinear", ["wb_q", "wb_s"], ["wb"], name="wb_DQ", axis=0),
             helper.make_node("Conv", ["ad", "wb"], ["b"], name="conv_b"), *qdq("b", "y")]
    inits = [numpy_helper.from_array(weight, "wa_q"), numpy_helper.from_array(weight.copy(), "wb_q"),
             *[numpy_helper.from_array(np.full(3, 0.01, np.float32), f"{w}_s") for w in ("wa", "wb")]]
    for out in ("xd", "ad", "y"):
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"{out}_s"),
                  numpy_helper.from_array(np.array(128, np.uint8), f"{out}_z")]
    graph = helper.make_graph(nodes, "twins", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    after = _copy(model)
    result = compact(after, {"x", "y", "conv_a", "conv_b"})
    assert result.shared == 5  # wb's scales; ad's and y's scale and zero point equal xd's
    fused = [check_fusion(m) for m in (model, after)]
    assert fused[0].quantized_layers == fused[1].quantized_layers == fused[1].integer_layers == 2
    samples = [{"x": np.random.default_rng(i).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for i in range(3)]
    _same_run(model, after, samples, tmp_path)


def _content(tensor: onnx.TensorProto) -> bytes:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    return copy.SerializeToString(deterministic=True)


def test_kept_names_and_interface_stay_as_they_are():
    """Two equal initializers the input had stay two; its node and tensor names, and the graph's
    inputs and outputs, are not renamed; recorded shapes of an unknown domain's ops stay."""
    zeros = np.zeros(4, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["s"], name="add_a"),
         helper.make_node("Add", ["s", "b"], ["s2"], name="add_b"),
         helper.make_node("Mul", ["s2", "made_up_long_generated_name"], ["made_up_output"], name="made_up_mul"),
         helper.make_node("Custom", ["made_up_output"], ["y"], name="custom", domain="my.ops")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(zeros, "a"), numpy_helper.from_array(zeros, "b"),
         numpy_helper.from_array(np.ones(4, np.float32), "made_up_long_generated_name")],
        value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]),
                    helper.make_tensor_value_info("y_inner", TensorProto.FLOAT, [4])])
    graph.node[-1].output[0] = "y_inner"
    graph.node.append(helper.make_node("Identity", ["y_inner"], ["y"], name="out"))
    model = helper.make_model(graph)
    keep = {"x", "a", "b", "s", "s2", "add_a", "add_b", "custom", "out", "y_inner"}
    compact(model, keep)
    assert [t.name for t in model.graph.initializer][:2] == ["a", "b"]
    assert [n.name for n in model.graph.node][:2] == ["add_a", "add_b"]
    assert [v.name for v in model.graph.value_info] == ["y_inner"]  # written by my.ops' Custom
    mul = model.graph.node[2]
    assert mul.name != "made_up_mul" and len(mul.name) <= 3
    assert mul.input[1] == model.graph.initializer[2].name != "made_up_long_generated_name"
    assert model.graph.node[3].input[0] == mul.output[0] != "made_up_output"
    assert model.graph.input[0].name == "x" and model.graph.output[0].name == "y"


def test_if_bodies_read_renamed_outer_tensors(uncompacted, tmp_path: Path):
    """Weights in If branches get DequantizeLinear (captured from the main graph too): the
    renamed names agree across the bodies, and both branches compute the same."""
    model = tiny_if_network()
    samples = if_samples(4)
    quantized = uncompacted(model, samples)
    after = _copy(quantized)
    result = compact(after, model_names(model))
    assert result.renamed > 0
    assert model_names(model) & model_names(quantized) <= model_names(after)
    _same_run(quantized, after, samples, tmp_path)


def test_float_compute_weights_still_fold_and_compute_the_same(uncompacted, tmp_path: Path):
    """Cast(int8) * scale with short names: onnxruntime still folds each into a float initializer."""
    model = _cnn(8, 3, 24, 96)
    samples = _samples(24, 96)
    quantized = uncompacted(model, samples, target="cpu-avx2")
    assert any(n.op_type == "Cast" for n in quantized.graph.node)  # float compute on int8 weights
    after = _copy(quantized)
    compact(after, model_names(model))
    _same_run(quantized, after, samples, tmp_path)
    ran = onnx.load(str(tmp_path / "after.onnx"))
    assert not any(n.op_type in ("Cast", "Mul") for n in ran.graph.node)  # folded at load


def _spatial_model(opset: int) -> onnx.ModelProto:
    """Convolutions, poolings and a Pad written with every attribute explicit, as exporters do:
    some equal to their default, some not."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 4, 3, 3)).astype(np.float32), "w")
    dw = numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "dw")
    spatial = {"dilations": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "auto_pad": "NOTSET"}
    pad = helper.make_node("Pad", ["x", "p"], ["xp"], name="pad", mode="constant") if opset >= 11 else \
        helper.make_node("Pad", ["x"], ["xp"], name="pad", mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)
    nodes = [
        pad,
        helper.make_node("Conv", ["xp", "w"], ["c1"], name="conv", group=1, kernel_shape=[3, 3], **spatial),
        helper.make_node("Conv", ["c1", "dw"], ["c2"], name="depthwise", group=8, kernel_shape=[3, 3],
                         dilations=[1, 1], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c2"], ["m"], name="max", kernel_shape=[2, 2], ceil_mode=0, storage_order=0,
                         **spatial),
        helper.make_node("AveragePool", ["m"], ["out"], name="avg", kernel_shape=[2, 2], count_include_pad=0,
                         ceil_mode=1, strides=[1, 1], pads=[0, 0, 0, 0], auto_pad="NOTSET"),
    ]
    inits = [w, dw] + ([numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")] if opset >= 11 else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [10, 17])
def test_default_attributes_are_dropped_and_onnxruntime_computes_the_same(opset: int, tmp_path: Path):
    model = _spatial_model(opset)
    after = _copy(model)
    result = compact(after, model_names(model))
    onnx.checker.check_model(after)
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in after.graph.node}
    assert attrs["conv"] == {"kernel_shape": [3, 3]}  # no default: kept
    assert attrs["depthwise"] == {"group": 8, "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    assert attrs["max"] == {"kernel_shape": [2, 2]}
    assert attrs["avg"] == {"kernel_shape": [2, 2], "ceil_mode": 1}
    # Pad before opset 11: ``pads`` is a required attribute, kept; ``value`` 0.0 dropped
    assert attrs["pad"] == ({} if opset >= 11 else {"pads": [0, 0, 1, 1, 0, 0, 1, 1]})
    assert result.default_attributes == sum(len(n.attribute) for n in model.graph.node) - \
        sum(len(n.attribute) for n in after.graph.node)
    samples = [{"x": np.random.default_rng(s).normal(size=(1, 4, 16, 16)).astype(np.float32)} for s in range(3)]
    _same_run(model, after, samples, tmp_path)
    again = _copy(model)
    compact(again, model_names(model))
    assert again.SerializeToString(deterministic=True) == after.SerializeToString(deterministic=True)


def test_attributes_of_other_ops_or_domains_and_of_mistyped_values_stay():
    """Only the listed ops of the default domain, and only a value of the schema's own type."""
    nodes = [helper.make_node("LpPool", ["x"], ["a"], name="lp", kernel_shape=[2, 2], p=2),
             helper.make_node("LpPool", ["x"], ["d"], name="lp_float_p", kernel_shape=[2, 2], p=2.0),
             helper.make_node("Conv", ["x", "w"], ["b"], name="ms", domain="com.example", group=1),
             helper.make_node("Gemm", ["f", "g"], ["c"], name="gemm", alpha=1.0, transA=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "xwfg"],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcd"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    compact(model, model_names(model))
    attrs = {n.name: [a.name for a in n.attribute] for n in model.graph.node}
    assert attrs == {"lp": ["kernel_shape"], "lp_float_p": ["kernel_shape", "p"], "ms": ["group"],
                     "gemm": ["alpha", "transA"]}


def test_only_the_rank_of_an_integer_reshape_to_a_computed_shape_is_kept():
    """onnxruntime cannot infer the rank of a Reshape to a computed shape: kept for the 8-bit
    tensors onnxquant moves (passes/int8_upsample.py), dropped for float ones, as before."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Cast", ["r"], ["c"], to=TensorProto.UINT8),
             helper.make_node("Shape", ["c"], ["s2"]), helper.make_node("Reshape", ["c", "s2"], ["q"]),
             helper.make_node("Identity", ["q"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    graph.value_info.extend([helper.make_tensor_value_info(name, elem, ["a", 4]) for name, elem in
                             (("r", TensorProto.FLOAT), ("c", TensorProto.UINT8), ("q", TensorProto.UINT8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    compact(model, {"r", "c", "q"})  # (names kept: the check reads them)
    assert [(v.name, len(v.type.tensor_type.shape.dim)) for v in model.graph.value_info] == [("q", 2)]
