"""The shape-based estimate says when a quantized network's MatMul/Gemm layers are too small for
int8 to pay on a CPU kind (onnxruntime's per-call int8 work on x86 without VNNI), and quantize
warns in one line; wide layers, and CPU kinds without figures, get no claim."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from models.tiny import dense_chain
from onnxquant.conv_cost import ConvEstimate, layer_weight_share
from onnxquant.dense_cost import COSTS, DenseEstimate, DenseShape, estimate, quantized_dense_shapes
from onnxquant.recipe import recipe_for_target
from onnxquant.results import FloatCompute

WARNING = "MatMul/Gemm layer(s) are small"


def _quantize(model: onnx.ModelProto, features: int, target: str, **overrides):
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, features)).astype(np.float32)} for _ in range(8)]
    recipe = recipe_for_target(target).with_overrides(search={"enabled": False}, **overrides)
    return onnxquant.quantize(model, samples, recipe)


def test_a_small_mlp_computes_in_float_on_x86_without_vnni():
    """Width 16, one row a sample (a scikit-learn MLP on a few features): measured 1.32x fp32 as
    int8 with every layer fused, so the default keeps int8 weights and computes in float, and says
    why: the MatMul layers' estimate, not the recipe."""
    result = _quantize(dense_chain(16), 10, "cpu-avx2")
    assert result.float_compute is not None and result.float_compute["layers"] == 3
    assert "MatMul/Gemm" in result.float_compute["reason"] and result.float_compute["estimated_dense_extra_us"] > 0
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)  # no activation quantized
    assert not any(WARNING in w for w in result.warnings)
    # no 7-bit claim: the folded weights are full 8-bit, and no kernel of the kind's is left to saturate
    assert "full 8-bit weights, computed in float" in result.notes[0] and "7-bit" not in result.notes[0]


def test_forced_integer_kernels_on_a_small_mlp_are_said_slower():
    """``integer_compute = true`` keeps the integer kernels: every layer fuses and still the
    summary says int8 may be slower, with the way to fp32's speed."""
    result = _quantize(dense_chain(16), 10, "cpu-avx2", quantization={"integer_compute": True})
    assert result.float_compute is None
    assert result.fusion is not None and result.fusion.float_islands == []
    found = estimate(result.model, {"x": (1, 10)}, "avx2")
    assert found is not None and found.layers == 3 and found.extra_us > 0
    said = [w for w in result.warnings if WARNING in w]
    assert len(said) == 1 and "--float-compute" in said[0] and "forced" in said[0]


def test_the_float_model_planned_gives_the_quantized_models_estimate():
    """Decided before the rewrite, on the float model's planned layers: the same layers, work and
    estimate as read from the integer model afterwards."""
    model = dense_chain(16)
    planned = estimate(model, {"x": (1, 10)}, "avx2", {"dense0", "dense1", "dense2"})
    quantized = _quantize(model, 10, "cpu-avx2", quantization={"integer_compute": True}).model
    after = estimate(quantized, {"x": (1, 10)}, "avx2")
    assert planned is not None and after is not None
    assert (planned.layers, planned.macs) == (after.layers, after.macs)
    assert abs(planned.extra_us - after.extra_us) < 1e-9
    assert planned.weight_share == 1.0
    only_two = estimate(model, {"x": (1, 10)}, "avx2", {"dense0", "dense1"})
    assert only_two is not None and only_two.layers == 2


def test_a_wide_mlp_is_not_called_slower():
    """Width 512 (measured 0.55x fp32 at batch 1): int8 saves more per weight than it costs."""
    result = _quantize(dense_chain(512, features=512), 512, "cpu-avx2")
    found = estimate(result.model, {"x": (1, 512)}, "avx2")
    assert found is not None and found.extra_us < 0
    assert not any(WARNING in w for w in result.warnings)


def test_a_wide_mlp_keeps_integer_kernels():
    """Width 512 (measured 0.55x fp32 at batch 1): int8 is faster, so no float compute."""
    result = _quantize(dense_chain(512, features=512), 512, "cpu-avx2")
    assert result.float_compute is None
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_no_estimate_without_figures_for_the_cpu_kind():
    """ARM64 has no measured figures: nothing is claimed there."""
    result = _quantize(dense_chain(16), 10, "cpu-arm64")
    assert estimate(result.model, {"x": (1, 10)}, "arm64") is None
    assert result.float_compute is None  # integer kernels: nothing says they are slower there
    assert not any(WARNING in w for w in result.warnings)


def test_vnni_figures_call_small_layers_slower_and_wide_ones_faster():
    """With VNNI (full 8-bit weights) the chains measured int8/fp32 1.35 at width 16 and 0.41 at
    1024: the per-call cost is there too, so a small MLP computes in float for that kind."""
    result = _quantize(dense_chain(16), 10, "cpu-vnni")
    assert result.float_compute is not None and "with VNNI" in result.float_compute["reason"]
    wide = _quantize(dense_chain(512, features=512), 512, "cpu-vnni", quantization={"integer_compute": True})
    found = estimate(wide.model, {"x": (1, 512)}, "vnni")
    assert found is not None and found.extra_us < 0


def test_rows_of_a_table_count_where_shape_inference_stops():
    """A layer whose output shape inference cannot tell (after an op without a shape function)
    still counts, with the rows of the model's one (rows, features) input."""
    model = dense_chain(16)
    quantized = _quantize(model, 10, "cpu-avx2", quantization={"integer_compute": True}).model
    for info in list(quantized.graph.value_info):
        quantized.graph.value_info.remove(info)
    shapes = quantized_dense_shapes(quantized, {"x": (8, 10)})
    assert [s.macs for s in shapes] == [8 * 10 * 16, 8 * 16 * 16, 8 * 16 * 16]


def test_the_figures_what_the_chains_showed():
    """Per layer, from the fitted figures: a small layer costs more as int8 (per call), a large
    one less (a quarter of the bytes read per weight, fewer cycles per multiply-add)."""
    fp32, int8 = COSTS["avx2"]
    small, large = DenseShape("s", 16 * 16, 16 * 16), DenseShape("l", 1024 * 1024, 1024 * 1024)
    assert int8.nanoseconds(small) > fp32.nanoseconds(small)
    assert int8.nanoseconds(large) < 0.5 * fp32.nanoseconds(large)


def _lstm_with_small_head(hidden: int = 64, features: int = 16, classes: int = 8) -> onnx.ModelProto:
    """A one-layer LSTM over (time, 1, features) and a small MatMul head on its last state."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, features)) * 0.2).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((hidden, classes)) * 0.2).astype(np.float32), "head_w")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["h"], ["h2"], name="squeeze"),
             helper.make_node("MatMul", ["h2", "head_w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20, 1, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def test_a_small_head_behind_a_recurrent_layer_does_not_decide_for_the_model():
    """The head's MatMul is estimated slower as int8, but it holds a few percent of the weights:
    the LSTM's integer kernel decides the model's speed, so the model keeps its integer kernels."""
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((20, 1, 16)).astype(np.float32)} for _ in range(4)]
    recipe = recipe_for_target("cpu-avx2").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(_lstm_with_small_head(), samples, recipe)
    assert result.float_compute is None
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in result.model.graph.node)


def test_token_ids_are_not_a_tables_rows():
    """Where shape inference stops, only a float (rows, features) input gives the layers' rows: an
    integer input of token ids (batch, sequence) says nothing of the MatMuls' rows, so a layer of
    unknown shape is left out rather than costed with the wrong rows."""
    rng = np.random.default_rng(4)
    table = numpy_helper.from_array(rng.standard_normal((100, 16)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantized_dense_shapes(model, {"ids": (1, 8)}, planned={"dense"}, known={}) == []
    float_input = dense_chain(16)
    assert len(quantized_dense_shapes(float_input, {"x": (4, 10)}, planned={"dense0"}, known={})) == 1


def test_a_recurrent_layers_recurrence_weights_count_in_its_share():
    """The share that lets small MatMuls decide counts an LSTM's W and R: the head is a small part
    of the weights, not a third of them."""
    model = _lstm_with_small_head()
    share = layer_weight_share(model, {"head"}, {"lstm", "head"})
    hidden, features, classes = 64, 16, 8
    assert share == pytest.approx(hidden * classes / (4 * hidden * (features + hidden) + hidden * classes))


def test_the_reason_quotes_the_total_the_decision_compared():
    """The reason and ``--json`` give the same total (MatMuls and Convs together); a total under
    0.05 us is not printed as '0.0 us slower'."""
    dense = DenseEstimate(layers=3, extra_us=2.0, macs=100)
    convs = ConvEstimate(layers=1, fp32_us=10.0, int8_us=8.5, slower=())
    told = FloatCompute(layers=4, estimate=convs, dense=dense)
    assert told.extra_us == pytest.approx(0.5)
    assert "0.5 us a sample slower" in told.reason and told.to_dict()["estimated_int8_extra_us"] == 0.5
    tiny = FloatCompute(layers=3, estimate=None, dense=DenseEstimate(layers=3, extra_us=0.01, macs=100))
    assert "under 0.1 us a sample slower" in tiny.reason


def test_a_small_head_is_not_said_to_make_the_model_slower():
    """The head alone is estimated slower as int8, but it holds a few percent of the weights: no
    warning that the model may run slower (seen on a VNNI host for a CNN classifier's small Gemm,
    where no convolution figures offset it)."""
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((20, 1, 16)).astype(np.float32)} for _ in range(4)]
    for target in ("cpu-avx2", "cpu-vnni"):
        recipe = recipe_for_target(target).with_overrides(search={"enabled": False},
                                                          quantization={"integer_compute": True})
        result = onnxquant.quantize(_lstm_with_small_head(), samples, recipe)
        head = estimate(result.model, {"x": (20, 1, 16)}, recipe.cpu.kind)
        assert head is not None and head.extra_us > 0 and head.weight_share < 0.1
        assert not any(WARNING in w for w in result.warnings)
