"""A constant affine between activations (PP-LCNetV3's learnable affine block) becomes a depthwise Conv."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import onnxquant
from onnxquant.passes.affine_as_depthwise import rewrite_affines
from onnxquant.passes.prepare import infer_shapes

C = 6


def _lab_model(reader: str = "Conv", scale_shape: tuple[int, ...] = (1,)) -> onnx.ModelProto:
    """Conv -> Relu -> (x * a + b) -> padded depthwise Conv (fold_affine cannot take the Add:
    the padded border would see b) -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((C, 1, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.uniform(0.5, 1.5, scale_shape)).astype(np.float32), "a"),
             numpy_helper.from_array(np.array([0.25], np.float32), "b")]
    tail = ([helper.make_node("Conv", ["y", "w1"], ["z"], name="dw", group=C, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["z"], ["p"], name="pool")] if reader == "Conv"
            else [helper.make_node("Softmax", ["y"], ["z"], name="softmax", axis=-1),
                  helper.make_node("ReduceMean", ["z"], ["p"], name="pool", axes=[2, 3])])
    nodes = [helper.make_node("Conv", ["input", "w0"], ["x0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["x0"], ["x"], name="relu"),
             helper.make_node("Mul", ["x", "a"], ["xa"], name="lab_mul"),
             helper.make_node("Add", ["xa", "b"], ["y"], name="lab_add"),
             *tail,
             helper.make_node("Flatten", ["p"], ["out"], name="flatten")]
    graph = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_scalar_and_per_channel_affines_become_one_exact_depthwise_conv():
    for scale_shape in ((1,), (1, C, 1, 1)):
        model = _lab_model(scale_shape=scale_shape)
        rewritten = infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
        assert rewrite_affines(rewritten) == 1
        onnx.checker.check_model(rewritten, full_check=True)
        ops = [n.op_type for n in rewritten.graph.node]
        assert "Mul" not in ops and "Add" not in ops and ops.count("Conv") == 3
        for feed in _feeds(3):
            np.testing.assert_allclose(_run(rewritten, feed), _run(model, feed), rtol=1e-5, atol=1e-6)


def test_an_affine_not_read_by_a_convolution_or_pool_is_left_alone():
    """Attention scores (4-D, read by Softmax) are no feature map: not rewritten."""
    model = infer_shapes(_lab_model(reader="Softmax"))
    assert rewrite_affines(model) == 0
    assert [n.op_type for n in model.graph.node].count("Mul") == 1


def test_quantized_affine_runs_as_an_integer_kernel():
    result = onnxquant.quantize(_lab_model(), _feeds(8))
    assert result.fusion is not None and result.fusion.round_trips == []
    assert any("written as depthwise 1x1 Conv" in note for note in result.notes)


def _dense_block() -> onnx.ModelProto:
    """DenseNet's pre-activation: Conv -> Concat(input, conv) -> BatchNormalization -> Relu -> Conv,
    with a two-input Sum residual (Caffe2-era exports): the BN follows a Concat, so no Conv takes it."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((3, C + 3, 3, 3)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, C + 3).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, C + 3).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.normal(0, 0.3, C + 3).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2.0, C + 3).astype(np.float32), "var")]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["x0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["input", "x0"], ["cat"], name="concat", axis=1),
             helper.make_node("BatchNormalization", ["cat", "gamma", "beta", "mean", "var"], ["bn"], name="bn",
                              epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["x1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["x1", "input"], ["res"], name="residual"),
             helper.make_node("GlobalAveragePool", ["res"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["out"], name="flatten")]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_an_unfolded_batch_norm_becomes_an_exact_depthwise_conv():
    model = _dense_block()
    rewritten = infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    assert rewrite_affines(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert "BatchNormalization" not in [n.op_type for n in rewritten.graph.node]
    for feed in _feeds(3):
        np.testing.assert_allclose(_run(rewritten, feed), _run(model, feed), rtol=1e-5, atol=1e-5)


def test_a_dense_block_with_a_sum_residual_keeps_no_bn_or_sum_round_trip():
    """Before: DQ -> BatchNormalization -> Q and DQ -> Sum -> Q round trips between the kernels.
    (The Concat stays one: onnxruntime's CPU provider has no QDQ Concat fusion.)"""
    result = onnxquant.quantize(_dense_block(), _feeds(8), onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert result.fusion is not None and [op for op, _ in result.fusion.round_trips] == ["Concat"]
    assert any("Sum(s) written as Add" in note for note in result.notes)
    assert {n.op_type for n in result.model.graph.node}.isdisjoint({"Sum", "BatchNormalization"})


def test_caffe2_batch_norm_then_scale_before_a_relu_is_one_depthwise_conv():
    """Caffe2's BN, then Mul and Add by (C, 1, 1) constants, then Relu: one depthwise Conv (the
    scale folded into it), exact; before, the Mul and Add (read by a Relu) stayed float."""
    from onnxquant.passes.prepare import prepare_model

    model = _dense_block()
    rng = np.random.default_rng(5)
    model.graph.initializer.extend([numpy_helper.from_array(rng.uniform(0.5, 1.5, (C + 3, 1, 1)).astype(np.float32), "s"),
                                    numpy_helper.from_array(rng.normal(0, 0.2, (C + 3, 1, 1)).astype(np.float32), "t")])
    relu = next(k for k, n in enumerate(model.graph.node) if n.op_type == "Relu")
    model.graph.node[relu].input[0] = "scaled"
    model.graph.node.insert(relu, helper.make_node("Add", ["bn_s", "t"], ["scaled"], name="scale_add"))
    model.graph.node.insert(relu, helper.make_node("Mul", ["bn", "s"], ["bn_s"], name="scale_mul"))
    prepared, report = prepare_model(model, integer_gates=True)
    ops = [n.op_type for n in prepared.graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops and "Add" not in ops[:ops.index("Relu")]
    assert report.affines_as_depthwise == 1 and report.folded_affines >= 2
    for feed in _feeds(3):
        np.testing.assert_allclose(_run(prepared, feed), _run(model, feed), rtol=1e-5, atol=1e-5)


def test_a_batch_norm_after_a_conv_transpose_stays_float():
    """PP-OCRv4 det's head: ConvTranspose (float on the CPU provider) -> BN -> Relu -> ConvTranspose.
    An int8 depthwise Conv there would add a Q/DQ pair between two float ops, not remove one."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((3, C, 2, 2)) * 0.3).astype(np.float32), "up_w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, C).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, C).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.normal(0, 0.3, C).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2.0, C).astype(np.float32), "var"),
             numpy_helper.from_array((rng.standard_normal((C, 1, 2, 2)) * 0.3).astype(np.float32), "up2_w")]
    nodes = [helper.make_node("ConvTranspose", ["input", "up_w"], ["up"], name="up", strides=[2, 2]),
             helper.make_node("BatchNormalization", ["up", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "up2_w"], ["out"], name="up2", strides=[2, 2])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 1, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rewritten = infer_shapes(model)
    assert rewrite_affines(rewritten) == 0
    assert "BatchNormalization" in [n.op_type for n in rewritten.graph.node]


def test_an_affine_writing_a_graph_output_stays_an_exact_float_affine():
    """A de-normalisation ``y * std + mean`` (or a BN) at the end gains no integer kernel: rewritten,
    it became a graph-output Conv that then took int8 weights."""
    model = _lab_model(scale_shape=(1, C, 1, 1))
    nodes = [n for n in model.graph.node if n.name in ("stem", "relu", "lab_mul", "lab_add")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, C, 8, 8])])
    rewritten = infer_shapes(model)
    assert rewrite_affines(rewritten) == 0
    assert [n.op_type for n in rewritten.graph.node][-2:] == ["Mul", "Add"]
