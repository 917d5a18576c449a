"""fp16 models are quantized with their fp16 inputs and outputs kept; fp16 weights behind Casts in a
float32 model, and float32 parameters whose values are fp16 values, are quantized and stored so too."""
from __future__ import annotations

import numpy as np
import onnx

import onnxquant
from models.quirks import feature_samples, float16_mlp
from onnxquant.passes.float16 import is_float16_model, widen_float16
from tests.conftest import INTEGER_KERNELS, run


def _fp32_model() -> onnx.ModelProto:
    from models.quirks import scaled_gemm_mlp

    return scaled_gemm_mlp()


def test_widening_is_exact_and_keeps_the_interface():
    model = float16_mlp()
    work = onnx.ModelProto.FromString(model.SerializeToString())
    was = widen_float16(work)
    assert was == {"w1", "b1", "w2", "b2"}
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in work.graph.initializer)
    assert work.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert work.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    for feed in feature_samples(3, dtype=np.float16):
        # fp32 inside: as close to the fp16 model as fp16 arithmetic itself is
        np.testing.assert_allclose(run(work, feed)[0].astype(np.float32), run(model, feed)[0].astype(np.float32),
                                   rtol=2e-2, atol=2e-2)
    assert is_float16_model(model) and not widen_float16(onnx.ModelProto.FromString(_fp32_model().SerializeToString()))


def test_float16_model_is_quantized_with_fp16_io(tmp_path):
    model = float16_mlp()
    out = tmp_path / "q.onnx"
    result = onnxquant.quantize(model, feature_samples(8, dtype=np.float16), INTEGER_KERNELS, output=out)
    assert result.quantized_nodes.get("Gemm") == 2
    assert result.fusion.integer_layers == 2
    written = onnx.load(str(out))
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert written.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    for feed in feature_samples(4, seed=7, dtype=np.float16):
        ref, got = run(model, feed)[0], run(written, feed)[0]
        assert got.dtype == np.float16
        a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_float_weights_of_an_fp16_model_stay_fp16_on_disk():
    from onnxquant.recipe import Recipe

    recipe = Recipe().with_overrides(quantization={"integer_compute": True}, nodes={"exclude": ("gemm2",)})
    result = onnxquant.quantize(float16_mlp(), feature_samples(8, dtype=np.float16), recipe)
    halves = [i for i in result.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert [tuple(i.dims) for i in halves] == [(64, 4)]  # w2, read through a Cast
    floats = {n.name: n for n in result.float_nodes}
    assert floats["gemm2"].reason == "excluded by --exclude" and floats["gemm2"].weight_bytes == 64 * 4 * 2
    # its share of the weight bytes as the fp16 file stores them: w2 of w1, b1, w2, b2
    assert abs(floats["gemm2"].share - 256 / (16 * 64 + 64 + 256 + 4)) < 1e-9
    feed = feature_samples(1, seed=5, dtype=np.float16)[0]
    assert run(result.model, feed)[0].dtype == np.float16


def _weights_behind_cast(tmp_path) -> onnx.ModelProto:
    """A float32 Conv/Gemm network whose weights are stored fp16, each behind a Cast to float32."""
    from models.float16_variants import store_weights_float16
    from models.quirks import mean_pooled_cnn

    onnx.save(mean_pooled_cnn(), str(tmp_path / "fp32.onnx"))
    return onnx.load(str(store_weights_float16(tmp_path / "fp32.onnx", tmp_path / "weights16.onnx")))


def _image_samples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (2, 3, 12, 12)).astype(np.float32)} for _ in range(count)]


def test_weights_stored_fp16_behind_casts_are_quantized_and_said(tmp_path):
    """Not an fp16 model (float32 interface): every layer is quantized from its fp16-stored weight,
    the summary says what was found, and a layer kept float keeps its weight in fp16 on disk."""
    model = _weights_behind_cast(tmp_path)
    assert {i.data_type for i in model.graph.initializer if len(i.dims) > 1} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    result = onnxquant.quantize(model, _image_samples(8))
    assert result.quantized_nodes.get("Conv") == 2 and result.quantized_nodes.get("Gemm") == 1
    assert result.fusion.integer_layers == 3
    notes = [n for n in result.notes if "fp16 initializers behind float32 inputs and outputs" in n]
    assert len(notes) == 1 and not any("fp16 inputs and outputs kept" in n for n in result.notes)
    for feed in _image_samples(3, seed=4):
        ref, got = run(model, feed)[0], run(result.model, feed)[0]
        assert got.dtype == np.float32
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999  # 0.99999 measured

    from onnxquant.recipe import Recipe

    kept = onnxquant.quantize(model, _image_samples(8), Recipe().with_overrides(nodes={"exclude": ("op:Gemm",)}))
    gemm = next(n for n in kept.model.graph.node if n.op_type == "Gemm")
    inits = {i.name: i for i in kept.model.graph.initializer}
    producers = {o: n for n in kept.model.graph.node for o in n.output}
    cast = producers[gemm.input[1]]
    assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == onnx.TensorProto.FLOAT16


def _conv_with_biases(exact: bool, channels: int = 32) -> onnx.ModelProto:
    """Conv-Relu-Conv whose float biases are fp16 values (``exact``; a model converted from fp16
    storage) or arbitrary float32 values."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def bias(name: str) -> onnx.TensorProto:
        value = rng.normal(0, 0.2, channels).astype(np.float32)
        if exact:
            value = value.astype(np.float16).astype(np.float32)
        return numpy_helper.from_array(value, name)

    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32), "w1"), bias("b1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (channels, channels, 1, 1)).astype(np.float32), "w2"), bias("b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "conv_biases", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with_original_values(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each fp16 initializer replaced by the float32 values of the original's
    initializer its Cast stands for (the Cast then casts float32 to float32)."""
    from onnx import numpy_helper

    out = onnx.ModelProto.FromString(model.SerializeToString())
    stands_for = {n.input[0]: n.output[0] for n in out.graph.node if n.op_type == "Cast"}
    values = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    for init in out.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16 and stands_for[init.name] in values:  # (not the scales)
            init.CopyFrom(numpy_helper.from_array(values[stands_for[init.name]], init.name))
    return out


def test_float_biases_that_are_fp16_values_are_stored_fp16_with_the_same_outputs():
    """Float compute on int8 weights (the CPU fallback) leaves each Conv's bias float32: where every
    value is an fp16 value (TF-Lite's fp16 models, converted), it is stored fp16 behind a Cast,
    and the outputs do not change by a bit."""
    from onnxquant.recipe import Recipe

    recipe = Recipe().with_overrides(quantization={"integer_compute": False})
    original = _conv_with_biases(exact=True)
    result = onnxquant.quantize(original, _image_samples(8), recipe)
    halves = {i.name: i for i in result.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    # the two biases, and the 32 scales of each Conv's int8 weight (passes/weight_only.py)
    assert sorted(tuple(i.dims) for i in halves.values()) == [(32,), (32,), (32, 1, 1, 1), (32, 1, 1, 1)]
    assert any("2 float parameter(s) of Conv/Gemm layers stored fp16" in n for n in result.notes)
    # (against the input's float32 biases: a rounded bias would show here)
    restored = _with_original_values(result.model, original)
    for feed in _image_samples(3, seed=6):
        np.testing.assert_array_equal(run(result.model, feed)[0], run(restored, feed)[0])
    # Arbitrary float32 biases stay float32 (the weights' scales are float16 as above).
    other = onnxquant.quantize(_conv_with_biases(exact=False), _image_samples(8), recipe)
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 and len(i.dims) == 1 for i in other.model.graph.initializer)
    # With integer kernels, the first Conv's bias is int32; the last Conv writes the graph output
    # (a float kernel on int8 weights), so only its bias (and its weight's scales) are stored fp16.
    integer = onnxquant.quantize(_conv_with_biases(exact=True), _image_samples(8),
                                 Recipe().with_overrides(quantization={"integer_compute": True}))
    inits = {i.name: i for i in integer.model.graph.initializer}
    assert sorted(tuple(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT16) \
        == [(32,), (32, 1, 1, 1)]
    assert sum(1 for i in inits.values() if i.data_type == onnx.TensorProto.INT32) == 1
