"""Recurrent layers and body layers with int8 weights: layout, scales, and the float result."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxquant
from models.tiny_control_flow import recurrent_samples, tiny_recurrent
from onnxquant import Recipe
from onnxquant.fusion_check import optimized_graph
from onnxquant.recipe import recipe_for_target
from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.passes.scopes import iter_scoped_nodes
from onnxquant.passes.weight_only import WeightOnly, quantize_weights_only
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
    assert any("dequantized in front of float LSTM" in n for n in floated.notes)
    float_bytes = sum(t.ByteSize() for g in iter_graphs(floated.model.graph) for t in g.initializer
                      if t.data_type == onnx.TensorProto.FLOAT)
    assert float_bytes < 0.15 * model.ByteSize()
    feed = recurrent_samples(1, seed=7)[0]
    ref = run(model, feed)[0]
    assert _sqnr(ref, run(floated.model, feed)[0]) > _sqnr(ref, run(dynamic.model, feed)[0])
