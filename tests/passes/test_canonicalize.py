"""Converter quirks are rewritten exactly into the forms onnxruntime fuses into integer kernels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxquant
from models.quirks import (feature_samples, image_like_samples, leaky_floor_cnn, left_weight_matmul, mean_pooled_cnn,
                           scaled_gemm_mlp, sklearn_style_mlp)
from onnxquant.passes.canonicalize import canonicalize
from onnxquant.passes.prepare import infer_shapes, prepare_model
from tests.conftest import INTEGER_KERNELS, run


def _canonical(model: onnx.ModelProto) -> tuple[onnx.ModelProto, object]:
    work = infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    return work, canonicalize(work)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_gemm_alpha_beta_and_scalar_bias_are_folded_exactly():
    model = scaled_gemm_mlp()
    work, report = _canonical(model)
    assert report.gemm_scales == 2 and report.gemm_biases == 1
    for node in work.graph.node:
        if node.op_type == "Gemm":
            assert not any(a.name in ("alpha", "beta") for a in node.attribute)
            bias = next(i for i in work.graph.initializer if i.name == node.input[2])
            assert len(bias.dims) == 1
    for feed in feature_samples(3):
        np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-5, atol=1e-6)


def test_left_operand_weight_moves_to_the_right_exactly():
    model = left_weight_matmul()
    work, report = _canonical(model)
    assert report.left_matmuls == 2
    inits = {i.name for i in work.graph.initializer}
    assert all(n.input[1] in inits for n in work.graph.node if n.op_type == "MatMul")
    rng = np.random.default_rng(3)
    feed = {"x": rng.normal(0, 1, (2, 8, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_sklearn_bias_shape_gives_integer_gemms():
    """skl2onnx's MatMul + Add((1, N)) becomes a Gemm with a (1, N) bias in onnxruntime's simplifier;
    with the bias as (N,), every layer runs as QGemm (before: float Gemms between DQ nodes)."""
    model = sklearn_style_mlp()
    _, report = prepare_model(model)
    assert any("(1, N)" in note for note in report.notes)
    samples = feature_samples(8)
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS)
    assert result.quantized_nodes.get("Gemm") == 2
    assert result.fusion is not None and result.fusion.integer_layers == result.fusion.quantized_layers == 2
    for feed in feature_samples(4, seed=9):
        assert _cosine(run(model, feed)[0], run(result.model, feed)[0]) > 0.99


def test_left_weight_matmuls_are_quantized_and_fused():
    model = left_weight_matmul()
    rng = np.random.default_rng(4)
    samples = [{"x": rng.normal(0, 1, (2, 8, 6)).astype(np.float32)} for _ in range(8)]
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS)
    assert result.quantized_nodes.get("MatMul") == 2
    assert result.fusion.integer_layers == 2
    feed = {"x": rng.normal(0, 1, (2, 8, 6)).astype(np.float32)}
    assert _cosine(run(model, feed)[0], run(result.model, feed)[0]) > 0.99


def test_weights_behind_cast_and_transpose_are_folded_without_the_simplifier():
    """fp16 storage behind a Cast (Keras/TF converters) and a transposed weight (old PyTorch
    exports): with ``--no-simplify`` nothing else folds them, and the layers would stay float."""
    from onnx import TensorProto, helper, numpy_helper

    from models.tiny import _init, _model
    from onnxquant.recipe import Recipe

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 32)).astype(np.float16), "w1_half"),
             _init("w2_t", rng.normal(0, 0.3, (4, 32)))]
    nodes = [helper.make_node("Cast", ["w1_half"], ["w1"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Transpose", ["w2_t"], ["w2"], name="transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "stored", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = _model(graph)
    work, report = _canonical(model)
    assert report.folded_weights == 2 and not any(n.op_type in ("Cast", "Transpose") for n in work.graph.node)
    for feed in feature_samples(2):
        np.testing.assert_array_equal(run(work, feed)[0], run(model, feed)[0])
    result = onnxquant.quantize(model, feature_samples(8), Recipe().with_overrides(simplify=False))
    assert result.quantized_nodes.get("MatMul") == 2


def test_gemm_trans_a_becomes_a_transpose_and_the_gemm_fuses():
    from onnx import TensorProto, helper

    from models.tiny import _init, _model

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm", transA=1),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "trans_a", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, "N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [_init("w", rng.normal(0, 0.3, (16, 8))), _init("b", rng.normal(0, 0.1, 8))])
    model = _model(graph)
    work, report = _canonical(model)
    assert report.gemm_transposes == 1
    feed = {"x": rng.normal(0, 1, (16, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-6, atol=1e-6)
    samples = [{"x": rng.normal(0, 1, (16, 4)).astype(np.float32)} for _ in range(6)]
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS)
    assert result.quantized_nodes.get("Gemm") == 1 and result.fusion.integer_layers == 1


@pytest.mark.parametrize("opset,keepdims", [(13, False), (17, True), (18, False), (18, True)])
def test_spatial_reduce_mean_becomes_an_exact_global_average_pool(opset: int, keepdims: bool):
    model = mean_pooled_cnn(opset=opset, keepdims=keepdims)
    work, report = _canonical(model)
    assert report.global_means == 1
    assert "ReduceMean" not in {n.op_type for n in work.graph.node}
    onnx.checker.check_model(work, full_check=True)
    for feed in image_like_samples(2):
        np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-5, atol=1e-6)


def test_a_reduce_mean_over_channels_is_left_alone():
    model = mean_pooled_cnn()
    mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    next(a for a in mean.attribute if a.name == "axes").ints[:] = [1, 2]  # channels and height: no global pool
    model.graph.node[-1].op_type = "Identity"  # (the Gemm no longer fits: keep the graph valid)
    del model.graph.node[-1].input[1:]
    del model.graph.node[-1].attribute[:]
    model.graph.output[0].type.tensor_type.shape.Clear()
    _, report = _canonical(model)
    assert report.global_means == 0


def test_mean_pooled_cnn_quantizes_with_no_float_pool_between_integer_kernels():
    """Before: the ReduceMean stayed float between the Convs' and the Gemm's integer kernels."""
    model = mean_pooled_cnn(opset=18)
    result = onnxquant.quantize(model, image_like_samples(8), onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert result.quantized_nodes.get("GlobalAveragePool") == 1
    assert result.fusion is not None and result.fusion.integer_layers == result.fusion.quantized_layers == 3
    assert not result.fusion.round_trips
    for feed in image_like_samples(3, seed=7):
        assert _cosine(run(model, feed)[0], run(result.model, feed)[0]) > 0.99


def test_a_two_input_sum_becomes_add_except_before_a_layer_norm():
    """A residual Sum is Add (an integer kernel); the Sum transformer_fusion writes before a
    LayerNormalization (to keep onnxruntime's slow SkipLayerNormalization away) stays."""
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    nodes = [helper.make_node("Sum", ["x", "y"], ["s"], name="residual"),
             helper.make_node("Sum", ["s", "x"], ["t"], name="before_norm"),
             helper.make_node("LayerNormalization", ["t", "scale"], ["out"], name="norm", axis=-1)]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "sums", value, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])],
                              [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    work, report = _canonical(model)
    assert report.sums == 1 and [n.op_type for n in work.graph.node] == ["Add", "Sum", "LayerNormalization"]
    feed = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "y": np.ones((2, 4), np.float32)}
    np.testing.assert_array_equal(run(work, feed)[0], run(model, feed)[0])


def test_a_reduce_mean_of_integers_stays_a_reduce_mean():
    """GlobalAveragePool takes float tensors only: a ReduceMean over H, W of an int32 tensor is left."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=TensorProto.INT32),
             helper.make_node("ReduceMean", ["xi"], ["m"], name="mean", axes=[2, 3], keepdims=1)]
    graph = helper.make_graph(nodes, "int_mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("m", TensorProto.INT32, [1, 2, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    work, report = _canonical(model)
    assert report.global_means == 0 and [n.op_type for n in work.graph.node] == ["Cast", "ReduceMean"]


def test_max_and_min_with_a_constant_become_an_exact_clip():
    model = leaky_floor_cnn()
    for node in model.graph.node:
        if node.name == "floor2":  # Min, the constant first: Clip(x, max=c)
            node.op_type, node.input[:] = "Min", ["floor", node.input[0]]
    work, report = _canonical(model)
    assert report.clips == 2
    clips = [n for n in work.graph.node if n.op_type == "Clip"]
    assert [n.name for n in clips] == ["floor1", "floor2"]
    assert clips[0].input[2:] in ([], [""]) and clips[1].input[1] == ""
    for feed in image_like_samples(3):
        np.testing.assert_array_equal(run(work, feed)[0], run(model, feed)[0])


def test_a_max_of_two_tensors_or_a_wider_constant_is_left_alone():
    model = leaky_floor_cnn()
    model.graph.node[2].input[1] = "l1"  # Max(l1, l1): no constant
    floor = next(i for i in model.graph.initializer if i.name == "floor")
    floor.CopyFrom(onnx.numpy_helper.from_array(np.full((1, 1, 1, 1, 1), -0.4, np.float32), "floor"))  # rank 5 > 4
    _, report = _canonical(model)
    assert report.clips == 0


def test_a_max_with_a_nan_constant_is_left_alone():
    """Max/Min propagate a NaN operand; a Clip with a NaN bound need not."""
    model = leaky_floor_cnn()
    floor = next(i for i in model.graph.initializer if i.name == "floor")
    floor.CopyFrom(onnx.numpy_helper.from_array(np.array(np.nan, np.float32), "floor"))
    _, report = _canonical(model)
    assert report.clips == 0


def test_a_leaky_relu_floor_runs_in_integer_kernels():
    """Before: each Max stayed float between the integer kernels (openWakeWord's embedding model: 19 of them)."""
    model = leaky_floor_cnn()
    result = onnxquant.quantize(model, image_like_samples(8), INTEGER_KERNELS.with_overrides(search={"enabled": False}))
    assert result.quantized_nodes.get("Clip") == 2 and result.quantized_nodes.get("LeakyRelu") == 2
    assert result.fusion is not None and not result.fusion.round_trips and not result.fusion.float_islands
    for feed in image_like_samples(3, seed=7):
        assert _cosine(run(model, feed)[0], run(result.model, feed)[0]) > 0.99
