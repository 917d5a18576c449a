"""Recurrent layers, body layers and folded weights with int8 weights: layout, scales (float16
behind a Cast for folded ones), and the float result."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxquant
from models.tiny_control_flow import recurrent_samples, tiny_recurrent
from onnxquant import Recipe
from onnxquant.fusion_check import optimized_graph
from onnxquant.inspect_model import inspect_model
from onnxquant.recipe import recipe_for_target
from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.passes.scopes import iter_scoped_nodes
from onnxquant.passes import weight_only
from onnxquant.passes.weight_only import MIN_HALF_SCALE_CHANNELS, WeightOnly, half_scale, quantize_weights_only
from tests.conftest import run


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-20)))


def _rewritten(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    targets = {s.qualified: WeightOnly((1, 2)) for s in iter_scoped_nodes(out.graph) if s.node.op_type in ("LSTM", "GRU", "RNN")}
    result = quantize_weights_only(out, targets, "int8", 17, **kwargs)
    assert result.nodes == 1 and result.tensors == 2
    return out


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_weights_int8_per_direction_and_row(op: str):
    model = tiny_recurrent(op)
    out = _rewritten(model)
    inits = {i.name: i for i in out.graph.initializer}
    assert "W" not in inits and "R" not in inits  # the float weights are gone
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 2
    rows = {"LSTM": 4, "GRU": 3, "RNN": 1}[op] * 16
    for node in dq:
        # Bidirectional: stored (2 * rows, K) with one scale per row of each direction.
        assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
        assert tensor_array(inits[node.input[1]]).shape == (2 * rows,)
    # The directions' weights differ 8x in scale: each direction keeps its own resolution.
    scales = tensor_array(inits[dq[0].input[1]]).reshape(2, rows)
    assert np.median(scales[1]) > 4 * np.median(scales[0])
    feed = recurrent_samples(1, seed=7)[0]
    assert _sqnr(run(model, feed)[0], run(out, feed)[0]) > 30


def test_lstm_as_dynamic_quantize_lstm():
    model = tiny_recurrent("LSTM")
    out = _rewritten(model, dynamic_lstm=True, reduce_range=True)
    node = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLSTM")
    assert node.domain == "com.microsoft" and len(node.input) == 12
    inits = {i.name: tensor_array(i) for i in out.graph.initializer}
    w, w_scale = inits[node.input[1]], inits[node.input[8]]
    assert w.dtype == np.int8 and w.shape == (2, 8, 64)  # (directions, input, 4 * hidden), transposed
    assert w_scale.shape == (2, 64) and np.abs(w).max() <= 64  # 7-bit: no u8s8 saturation without VNNI
    feed = recurrent_samples(1, seed=7)[0]
    assert _sqnr(run(model, feed)[0], run(out, feed)[0]) > 25


@pytest.mark.parametrize("target, kernel", [("cpu", "DynamicQuantizeLSTM"), ("openvino", "LSTM"), ("qnn", "LSTM")])
def test_quantize_compresses_lstm_per_target(target: str, kernel: str):
    model = tiny_recurrent("LSTM", hidden=32)
    recipe = recipe_for_target(target)
    result = onnxquant.quantize(model, recurrent_samples(8), recipe)
    ops = [n.op_type for n in result.model.graph.node]
    assert kernel in ops and result.quantized_nodes.get("LSTM") == 1
    assert "rnn" in result.weight_only and any("recurrent layers: 1 (LSTM)" in n for n in result.notes)
    float_bytes = sum(t.ByteSize() for g in iter_graphs(result.model.graph) for t in g.initializer
                      if t.data_type == onnx.TensorProto.FLOAT)
    assert float_bytes < 0.15 * model.ByteSize()
    # The int8 LSTM (at most 4 dB: DynamicQuantizeLSTM also quantizes its inputs) costs little next to the same recipe with the LSTM left float (on qnn every
    # other op is quantized too, which costs more on this tiny model).
    float_lstm = onnxquant.quantize(model, recurrent_samples(8), recipe.with_overrides(nodes={"exclude": ("op:LSTM",)}))
    feed = recurrent_samples(1, seed=7)[0]
    ref = run(model, feed)[0]
    assert _sqnr(ref, run(result.model, feed)[0]) > _sqnr(ref, run(float_lstm.model, feed)[0]) - 4.0
    if target != "qnn":
        assert _sqnr(ref, run(result.model, feed)[0]) > 25


def test_excluded_lstm_stays_float_with_reason():
    result = onnxquant.quantize(tiny_recurrent("LSTM"), recurrent_samples(4),
                                Recipe().with_overrides(nodes={"exclude": ("op:LSTM",)}))
    assert ("rnn", "LSTM") in {(f.name, f.op_type) for f in result.float_nodes}
    assert "LSTM" in [n.op_type for n in result.model.graph.node] and not result.weight_only


def test_lstm_float_compute_keeps_int8_weights_and_is_closer_to_fp32():
    """quantization.recurrent_integer = false (what the recipe search tries on LSTM models): the
    int8 weights feed a standard LSTM through DequantizeLinear, without DynamicQuantizeLSTM's
    per-step uint8 activations, whose error compounds over time (Resemblyzer: cosine 0.81 -> 0.99)."""
    model = tiny_recurrent("LSTM", hidden=32)
    samples = recurrent_samples(8)
    dynamic = onnxquant.quantize(model, samples, Recipe().with_overrides(search={"enabled": False}))
    floated = onnxquant.quantize(model, samples, Recipe().with_overrides(quantization={"recurrent_integer": False},
                                                                         search={"enabled": False}))
    ops = [n.op_type for n in floated.model.graph.node]
    assert "LSTM" in ops and "DynamicQuantizeLSTM" not in ops
    # one direction: Cast(int8) * scale, which onnxruntime folds into prepacked float weights at
    # load (a DequantizeLinear would run every call and leave the LSTM unpacked weights)
    uni = onnxquant.quantize(tiny_recurrent("LSTM", direction="forward", hidden=32), samples,
                             Recipe().with_overrides(quantization={"recurrent_integer": False}, search={"enabled": False}))
    lstm = next(n for n in uni.model.graph.node if n.op_type == "LSTM")
    producers = {o: n.op_type for n in uni.model.graph.node for o in n.output}
    assert producers[lstm.input[1]] == "Mul" and producers[lstm.input[2]] == "Mul"
    runtime = optimized_graph(uni.model).graph  # what onnxruntime runs: W and R are float initializers there
    folded = {i.name for i in runtime.initializer if i.data_type == onnx.TensorProto.FLOAT}
    (runtime_lstm,) = [n for n in runtime.node if n.op_type == "LSTM"]
    assert runtime_lstm.input[1] in folded and runtime_lstm.input[2] in folded
    # inspect counts both int8 weights, W and the recurrence R (it counted W alone: 1,024 of 5,120)
    (layer,) = [layer for layer in inspect_model(uni.model).layers if layer.op_type == "LSTM"]
    assert layer.precision == "int8" and layer.parameters == 4 * 32 * (8 + 32)
    assert any("dequantized in front of float LSTM" in n for n in floated.notes)
    float_bytes = sum(t.ByteSize() for g in iter_graphs(floated.model.graph) for t in g.initializer
                      if t.data_type == onnx.TensorProto.FLOAT)
    assert float_bytes < 0.15 * model.ByteSize()
    feed = recurrent_samples(1, seed=7)[0]
    ref = run(model, feed)[0]
    assert _sqnr(ref, run(floated.model, feed)[0]) > _sqnr(ref, run(dynamic.model, feed)[0])


def _conv_model(channels: int, scale: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """One Conv (``channels`` outputs, weights of magnitude about ``scale``) and a Relu."""
    rng = np.random.default_rng(seed)
    weight = (rng.normal(size=(channels, 8, 3, 3)) * scale * rng.uniform(0.2, 2.0, size=(channels, 1, 1, 1)))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
         onnx.helper.make_node("Relu", ["y"], ["out"], name="relu")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 12, 12])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, channels, 12, 12])],
        [onnx.numpy_helper.from_array(weight.astype(np.float32), "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def _folded(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = quantize_weights_only(out, {"conv": WeightOnly((1,), fold=True)}, "int8", 17)
    assert result.nodes == 1 and result.tensors == 1
    onnx.checker.check_model(out)
    return out


def _scale_and_weight(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """(the folded weight's stored scale, its int8 values)."""
    inits = {i.name: tensor_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    mul = producer[conv.input[1]]
    weight = inits[producer[mul.input[0]].input[0]]
    scale = mul.input[1] if mul.input[1] in inits else producer[mul.input[1]].input[0]
    return inits[scale], weight


def test_half_scale_rounds_up_to_the_next_float16():
    scale = np.random.default_rng(1).uniform(1e-3, 1e-1, size=64).astype(np.float32)
    half = half_scale(scale)
    assert half is not None and half.dtype == np.float16
    assert np.all(half.astype(np.float32) >= scale)
    below = np.nextafter(half, np.float16(0))  # the float16 under each: too small for its scale
    assert np.all(below.astype(np.float32) < scale)
    exact = np.full(32, 0.5, np.float32)  # representable: kept as it is
    assert np.array_equal(half_scale(exact), exact.astype(np.float16))


def test_half_scale_keeps_float32_for_few_channels_or_out_of_range():
    assert half_scale(np.full(MIN_HALF_SCALE_CHANNELS - 1, 0.01, np.float32)) is None
    assert half_scale(np.full(MIN_HALF_SCALE_CHANNELS, 0.01, np.float32)) is not None
    tiny = np.full(32, 0.01, np.float32)
    tiny[3] = 3e-5  # subnormal in float16
    assert half_scale(tiny) is None
    huge = np.full(32, 0.01, np.float32)
    huge[5] = 7e4  # above float16's largest
    assert half_scale(huge) is None


def test_folded_weight_scales_stored_float16_and_weights_quantized_on_them():
    model = _conv_model(32)
    folded = _folded(model)
    scale, q = _scale_and_weight(folded)
    assert scale.dtype == np.float16 and scale.shape == (32, 1, 1, 1)
    weight = tensor_array(model.graph.initializer[0]).astype(np.float64)
    expected = np.clip(np.rint(weight / scale.astype(np.float64)), -127, 127)
    assert np.array_equal(q, expected.astype(np.int8))
    assert np.abs(weight / scale.astype(np.float64)).max() <= 127  # rounded up: nothing clips
    # onnxruntime folds both Casts and the Mul into one float initializer at load
    runtime = optimized_graph(folded).graph
    assert [n.op_type for n in runtime.node] == ["FusedConv"]  # (Conv and Relu), as fp32's
    assert {i.data_type for i in runtime.initializer} == {onnx.TensorProto.FLOAT}


def test_float16_scales_compute_as_the_float32_ones(monkeypatch: pytest.MonkeyPatch):
    model = _conv_model(48)
    half = _folded(model)
    monkeypatch.setattr(weight_only, "MIN_HALF_SCALE_CHANNELS", 10**9)
    full = _folded(model)
    assert _scale_and_weight(full)[0].dtype == np.float32
    assert half.ByteSize() < full.ByteSize()
    feed = {"x": np.random.default_rng(3).normal(size=(1, 8, 12, 12)).astype(np.float32)}
    ref, got_half, got_full = run(model, feed)[0], run(half, feed)[0], run(full, feed)[0]
    assert _sqnr(ref, got_half) > 40 and abs(_sqnr(ref, got_half) - _sqnr(ref, got_full)) < 0.5
    # a weight may round to the neighbouring int8 value: the two differ by less than either's error
    assert np.abs(got_half - got_full).max() <= np.abs(ref - got_full).max()


@pytest.mark.parametrize("channels, scale", [(MIN_HALF_SCALE_CHANNELS - 1, 1.0), (32, 1e-4)])
def test_few_channels_or_tiny_scales_keep_float32_scales(channels: int, scale: float):
    folded = _folded(_conv_model(channels, scale))
    stored, _ = _scale_and_weight(folded)
    assert stored.dtype == np.float32
    assert sum(n.op_type == "Cast" for n in folded.graph.node) == 1  # the int8 weight's only


def test_integer_kernels_keep_float32_scales_and_fuse_as_before(monkeypatch: pytest.MonkeyPatch):
    """The integer-kernel (QDQ) form: every DequantizeLinear reads a float32 scale initializer (a
    Cast in front would keep onnxruntime from fusing it), and the fusion check counts the same
    integer kernels as with float16 scales turned off."""
    from onnxquant.fusion_check import check_fusion
    from tests.test_conv_cost import _cnn, _samples

    model, samples = _cnn(32, 2, 24, 48), _samples(24, 48)
    recipe = recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False},
                                                          quantization={"integer_compute": True})
    quantized = onnxquant.quantize(model, samples, recipe).model
    inits = {i.name: i for i in quantized.graph.initializer}
    dqs = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in dqs)
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in inits.values())
    monkeypatch.setattr(weight_only, "MIN_HALF_SCALE_CHANNELS", 10**9)
    before = onnxquant.quantize(model, samples, recipe).model
    fused, fused_before = check_fusion(quantized), check_fusion(before)
    assert fused.integer_layers == fused.quantized_layers == fused_before.integer_layers > 0
    assert quantized.SerializeToString() == before.SerializeToString()
