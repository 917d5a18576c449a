import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.errors import UsageError
from onnxquant.passes.int4_matmul import (
    dequantize_int4,
    int4_sqnr_db,
    quantize_int4,
    to_matmul_nbits,
)
from onnxquant.recipe import Recipe
from tests.conftest import run


def _mlp(outlier: bool = False) -> onnx.ModelProto:
    """(1, 4, 64) tokens -> MatMul 64x64 -> Relu -> MatMul 64x32 (-> Relu, so both are int8)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (64, 64)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (64, 32)).astype(np.float32)
    if outlier:  # one large weight per block: int4 rounds most of the rest of each block to zero
        w2[::32, :] = 0.8
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="r1"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="mm2"), helper.make_node("Relu", ["m"], ["y"], name="r2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 4, 64)).astype(np.float32)} for _ in range(n)]


def test_matmul_nbits_computes_with_the_int4_weights():
    model = _mlp()
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    assert to_matmul_nbits(model, {"mm1"}, 32) == 1
    assert model.graph.node[0].op_type == "MatMulNBits"
    assert "w1" not in {i.name for i in model.graph.initializer}  # the float weight is gone
    codes, scales = quantize_int4(w1, 32)
    assert codes.min() >= -7 and codes.max() <= 7
    x = _samples(1, 1)[0]
    expected = np.maximum(np.maximum(x["x"] @ dequantize_int4(codes, scales, 32), 0) @ numpy_helper.to_array(
        model.graph.initializer[0]), 0)
    # MatMulNBits (accuracy level 4) quantizes activations to int8 per block: close, not exact
    np.testing.assert_allclose(run(model, x)[0], expected, rtol=0.05, atol=0.05)


def test_int4_sqnr_tells_heavy_tails_apart():
    assert int4_sqnr_db(numpy_helper.to_array(_mlp().graph.initializer[1]), 32) > 18
    assert int4_sqnr_db(numpy_helper.to_array(_mlp(outlier=True).graph.initializer[1]), 32) < 18


def test_weight_bits_4_in_the_pipeline(tmp_path):
    model = _mlp(outlier=True)
    result = onnxquant.quantize(model, _samples(16, 1), Recipe().with_overrides(quantization={"integer_compute": True, "weight_bits": 4}),
                                tmp_path / "q.onnx")
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMulNBits") == 1  # mm1; mm2's weight has outliers and stays int8
    assert any("1 MatMul weights kept int8" in n for n in result.notes)
    held = _samples(4, 2)
    ref = np.concatenate([run(model, s)[0].ravel() for s in held])
    got = np.concatenate([run(tmp_path / "q.onnx", s)[0].ravel() for s in held])
    assert float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.97


def test_int4_with_a_budget_takes_only_what_the_budget_allows():
    model = _mlp()
    recipe = Recipe().with_overrides(quantization={"integer_compute": True, "weight_bits": 4})
    loose = onnxquant.quantize(model, _samples(16, 1), recipe, holdout=_samples(8, 2), max_drop=0.5)
    assert len(loose.mixed_precision["int4_layers"]) == 2
    tight = onnxquant.quantize(model, _samples(16, 1), recipe, holdout=_samples(8, 2), max_drop=0.0)
    assert tight.mixed_precision["int4_layers"] == [] and tight.mixed_precision["drop"] <= 0.0


def test_int4_is_for_the_cpu_target():
    with pytest.raises(UsageError, match="target cpu"):
        Recipe(target="qnn").with_overrides(quantization={"weight_bits": 4})
