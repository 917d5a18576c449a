"""fp16 models are quantized with their fp16 inputs and outputs kept."""
from __future__ import annotations

import numpy as np
import onnx

import onnxquant
from models.quirks import feature_samples, float16_mlp
from onnxquant.passes.float16 import is_float16_model, widen_float16
from tests.conftest import run


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
    result = onnxquant.quantize(model, feature_samples(8, dtype=np.float16), output=out)
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

    recipe = Recipe().with_overrides(nodes={"exclude": ("gemm2",)})
    result = onnxquant.quantize(float16_mlp(), feature_samples(8, dtype=np.float16), recipe)
    halves = [i for i in result.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert [tuple(i.dims) for i in halves] == [(64, 4)]  # w2, read through a Cast
    floats = {n.name: n for n in result.float_nodes}
    assert floats["gemm2"].reason == "excluded by --exclude" and floats["gemm2"].weight_bytes == 64 * 4 * 2
    # its share of the weight bytes as the fp16 file stores them: w2 of w1, b1, w2, b2
    assert abs(floats["gemm2"].share - 256 / (16 * 64 + 64 + 256 + 4)) < 1e-9
    feed = feature_samples(1, seed=5, dtype=np.float16)[0]
    assert run(result.model, feed)[0].dtype == np.float16
