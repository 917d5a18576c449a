"""HardSigmoid/HardSwish written as Conv + Clip: exact in float, and integer kernels in onnxruntime.

A mobile block built in code (hard-swish after a Conv, a squeeze-excite gate ending in
HardSigmoid, a Mul by the gate, a global pool) must leave no DequantizeLinear feeding float
compute in onnxruntime's optimized graph of the quantized model.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxquant
from onnxquant.fusion_check import optimized_graph
from onnxquant.passes.hardsigmoid_as_conv import rewrite_hardsigmoid
from onnxquant.passes.prepare import infer_shapes
from onnxquant.ops.rules import DEFAULT_OP_TYPES
from onnxquant.recipe import QuantizationSettings, Recipe
from tests.conftest import INTEGER_KERNELS

C, H, W = 8, 6, 10


def _mobile_block(opset: int = 13, hardswish_op: bool = False) -> onnx.ModelProto:
    """stem Conv -> hard-swish -> SE (GAP, Conv, Relu, Conv, HardSigmoid, Mul) -> GAP -> Conv head."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("w0", C, 3, 3, 3), init("b0", C), init("w1", 4, C, 1, 1), init("b1", 4),
             init("w2", C, 4, 1, 1), init("b2", C), init("w3", 5, C, 1, 1), init("b3", 5)]
    if hardswish_op:
        swish = [helper.make_node("HardSwish", ["x0"], ["hs"], name="hswish")]
    else:
        swish = [helper.make_node("HardSigmoid", ["x0"], ["g0"], name="hsig0", alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["x0", "g0"], ["hs"], name="hs_mul")]
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["x0"], name="stem", pads=[1, 1, 1, 1]),
        *swish,
        helper.make_node("GlobalAveragePool", ["hs"], ["p"], name="se_pool"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["s1"], name="se_reduce"),
        helper.make_node("Relu", ["s1"], ["s2"], name="se_relu"),
        helper.make_node("Conv", ["s2", "w2", "b2"], ["s3"], name="se_expand"),
        helper.make_node("HardSigmoid", ["s3"], ["gate"], name="se_gate", alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["hs", "gate"], ["se"], name="se_mul"),
        helper.make_node("Conv", ["se", "w3", "b3"], ["h"], name="head"),
        helper.make_node("GlobalAveragePool", ["h"], ["ph"], name="head_pool"),
        helper.make_node("Flatten", ["ph"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(nodes, "mobile_block",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _samples(n: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((1, 3, H, W)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("hardswish_op", [False, True])
def test_rewrite_is_exact_in_float(hardswish_op):
    model = _mobile_block(opset=14, hardswish_op=hardswish_op)
    rewritten = infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    report = rewrite_hardsigmoid(rewritten, 14)
    onnx.checker.check_model(rewritten, full_check=True)
    assert (report.folded, report.depthwise, report.hardswish_split) == (1, 1, int(hardswish_op))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "HardSigmoid" not in ops and "HardSwish" not in ops
    assert ops.count("Clip") == 2
    for feed in _samples(4):
        np.testing.assert_allclose(_run(rewritten, feed), _run(model, feed), rtol=1e-5, atol=1e-6)


def test_a_shared_conv_output_is_not_folded():
    """The stem's output feeds the gate and the Mul: folding the gate into the stem would change
    what the Mul reads, so that gate becomes a depthwise Conv and the stem keeps its weights."""
    model = infer_shapes(_mobile_block())
    stem_weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w0")).copy()
    rewrite_hardsigmoid(model, 13)
    stem = next(n for n in model.graph.node if n.name == "stem")
    assert stem.input[1] == "w0"
    np.testing.assert_array_equal(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w0")),
                                  stem_weight)
    dw = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "x0"]
    assert len(dw) == 1 and helper.get_attribute_value(next(a for a in dw[0].attribute if a.name == "group")) == C


def test_unknown_channel_count_is_left_alone():
    model = _mobile_block()
    del model.graph.value_info[:]
    report = rewrite_hardsigmoid(model, 13)  # no shape inference ran: x0's channel count is not recorded
    assert report.depthwise == 0
    assert [n.op_type for n in model.graph.node].count("HardSigmoid") == 1  # the hard-swish gate stays


def test_old_opset_is_left_alone():
    model = infer_shapes(_mobile_block(opset=13))
    assert rewrite_hardsigmoid(model, 10).total == 0


@pytest.mark.parametrize("hardswish_op", [False, True])
def test_quantized_mobile_block_has_no_float_islands(hardswish_op):
    """Every hard-swish, SE gate, Mul and pool runs as an integer kernel: no DequantizeLinear in
    onnxruntime's optimized graph feeds a float op (the graph's final Flatten is data movement)."""
    model = _mobile_block(opset=14, hardswish_op=hardswish_op)
    # integer kernels asked for: on x86 without VNNI the search may take float compute on this block
    result = onnxquant.quantize(model, _samples(), Recipe().with_overrides(quantization={"integer_compute": True}))
    optimized = optimized_graph(result.model).graph
    dequantized = {n.output[0] for n in optimized.node if n.op_type == "DequantizeLinear"}
    float_readers = sorted({n.op_type for n in optimized.node if set(n.input) & dequantized} - {"Flatten"})
    assert float_readers == []
    ops = {n.op_type for n in optimized.node}
    assert {"QLinearConv", "QLinearMul", "QLinearGlobalAveragePool"} <= ops
    assert not ops & {"HardSigmoid", "HardSwish", "Mul", "GlobalAveragePool"}
    assert any("HardSigmoid gates written as Conv + Clip" in note for note in result.notes)
    feed = _samples(1)[0]
    ref, got = _run(model, feed), _run(result.model, feed)
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_other_targets_keep_hardsigmoid():
    result = onnxquant.quantize(_mobile_block(), _samples(), recipe=onnxquant.Recipe(target="qnn"))
    assert any(n.op_type == "HardSigmoid" for n in result.model.graph.node)


def test_a_float_op_between_integer_kernels_is_reported():
    """Without Mul in the recipe's op types the gates are not rewritten: the hard-swish and SE
    blocks stay float between integer kernels, the fusion self-check names each float op as a
    round trip, and quantize warns that these parts may run slower than fp32."""
    ops = tuple(t for t in DEFAULT_OP_TYPES if t != "Mul")
    recipe = onnxquant.Recipe(quantization=QuantizationSettings(op_types=ops, integer_compute=True))
    result = onnxquant.quantize(_mobile_block(), _samples(), recipe=recipe)
    assert result.fusion is not None
    assert result.fusion.round_trips == [("HardSigmoid", "hsig0"), ("Mul", "hs_mul"), ("GlobalAveragePool", "se_pool"),
                                         ("HardSigmoid", "se_gate"), ("Mul", "se_mul")]
    assert result.fusion.round_trip_summary() == "HardSigmoid 2, Mul 2, GlobalAveragePool 1"
    assert any("5 float op(s) run between integer kernels" in w for w in result.warnings)
    clean = onnxquant.quantize(_mobile_block(), _samples(), Recipe().with_overrides(quantization={"integer_compute": True}))
    assert clean.fusion is not None and clean.fusion.round_trips == []
    assert not any("between integer kernels" in w for w in clean.warnings)


def _silu_resize_concat_block() -> onnx.ModelProto:
    """stem Conv -> SiLU (x * Sigmoid(x)) -> Resize x2 -> Concat with a second branch -> Conv."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((C, 3, 1, 1)) * 0.3).astype(np.float32), "wb"),
             numpy_helper.from_array((rng.standard_normal((4, 2 * C, 1, 1)) * 0.3).astype(np.float32), "wh"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["x"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Sigmoid", ["x"], ["sx"], name="sigmoid"),
        helper.make_node("Mul", ["x", "sx"], ["silu"], name="silu"),
        helper.make_node("Resize", ["silu", "", "scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Conv", ["input", "wb"], ["branch"], name="branch"),
        helper.make_node("Concat", ["up", "branch"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wh"], ["h"], name="head"),
        helper.make_node("GlobalAveragePool", ["h"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(nodes, "silu_block",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_silu_resize_and_concat_run_as_integer_kernels():
    """SiLU needs no rewrite (QLinearSigmoid, QLinearMul); Resize and Concat (one shared scale)
    run on the 8-bit tensors, their Q/DQ dropped (the nearest 2x Resize as an Expand of the
    integers: passes/int8_upsample.py)."""
    result = onnxquant.quantize(_silu_resize_concat_block(), _samples(), INTEGER_KERNELS)
    assert result.fusion is not None and result.fusion.round_trips == []
    optimized = optimized_graph(result.model).graph
    ops = {n.op_type for n in optimized.node}
    assert {"QLinearSigmoid", "QLinearMul"} <= ops and not ops & {"Sigmoid", "Mul"}
    dequantized = {n.output[0] for n in optimized.node if n.op_type == "DequantizeLinear"}
    moved = [n for n in optimized.node if n.op_type in ("Resize", "Expand", "Concat", "QLinearConcat")]
    assert len(moved) == 2 and not any(set(n.input) & dequantized for n in moved)


def test_inspect_tells_the_inserted_gate_conv_from_the_input_layers(tmp_path):
    """The hard-swish gate's depthwise Conv is a layer the input did not have: ``inspect`` counts
    it apart (4 Convs in the input, 5 in the result, of which 1 inserted), in the text too."""
    from click.testing import CliRunner

    from onnxquant.cli import main
    from onnxquant.inspect_model import inspect_model

    model = _mobile_block(opset=14)
    result = onnxquant.quantize(model, _samples(), INTEGER_KERNELS, output=tmp_path / "q.onnx")
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 4
    info = inspect_model(result.model)
    assert info.inserted_counts() == {"Conv": 1}
    assert sum(layer.op_type == "Conv" for layer in info.layers) == 5
    assert [layer.inserted for layer in info.layers if layer.node == "stem"] == [False]
    assert info.to_dict()["inserted_layers"] == {"Conv": 1}
    assert inspect_model(model).inserted_counts() == {}
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "q.onnx"), "--layers"])
    assert shown.exit_code == 0, shown.output
    assert "of these, inserted by onnxquant's rewrites (layers the input model did not have): Conv 1" in shown.output
    assert shown.output.count("(inserted by onnxquant)") == 1
