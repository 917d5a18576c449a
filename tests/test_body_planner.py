"""Weights and activations inside If/Loop bodies: integer kernels where calibrated, int8 weights
elsewhere, each weight stored once, and the same answers as the float model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxquant
from models.tiny_control_flow import (
    if_samples,
    tiny_if_network,
    tiny_loop_matmul,
    tiny_outer_weight_body,
    tiny_scan_matmul,
)
from onnxquant.model_io import iter_graphs
from tests.conftest import INTEGER_KERNELS, run


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-20)))


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """Op types onnxruntime runs after its fusions, in every graph (bodies too)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for g in iter_graphs(onnx.load(str(tmp_path / "optimized.onnx")).graph) for n in g.node]


def _float_weight_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for g in iter_graphs(model.graph) for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT)


def test_network_inside_if_branches_is_compressed_and_fused(tmp_path: Path):
    model = tiny_if_network()
    result = onnxquant.quantize(model, if_samples(8))
    assert result.size_after < 0.3 * result.size_before
    assert _float_weight_bytes(result.model) < 0.1 * _float_weight_bytes(model)
    # Both branches' Convs are integer kernels (onnxruntime fuses QDQ inside bodies), the LSTMs
    # multiply int8 weights; the captured outer Conv weight no longer exists in float.
    ops = _optimized_ops(result.model, tmp_path)
    assert ops.count("QLinearConv") == 4 and ops.count("DynamicQuantizeLSTM") == 2
    assert "shared_conv_w" not in {t.name for g in iter_graphs(result.model.graph) for t in g.initializer}
    assert result.quantized_nodes == {"Conv": 4, "Relu": 4, "Transpose": 2, "LSTM": 2}
    # the self-check looks inside the bodies too (it used to say "0 of 0")
    assert (result.fusion.quantized_layers, result.fusion.integer_layers) == (4, 4)
    for flag in (True, False):
        feed = {**if_samples(1, seed=5)[0], "flag": np.array(flag)}
        assert _sqnr(run(model, feed)[0], run(result.model, feed)[0]) > 25


def test_identical_branch_weights_are_stored_once():
    result = onnxquant.quantize(tiny_if_network(), if_samples(8))
    int8 = [t for g in iter_graphs(result.model.graph) for t in g.initializer if t.data_type == onnx.TensorProto.INT8
            and len(t.dims) == 3 and t.dims[0] == 1]  # the LSTMs' (1, K, 4 * hidden) weights
    assert len(int8) == 2  # W and R once, in the main graph both branches see
    assert {t.name for t in int8} <= {t.name for t in result.model.graph.initializer}


def test_an_integer_lstm_inside_a_branch_is_not_reported_float_for_its_bias():
    """DynamicQuantizeLSTM takes its bias in float: inside an If body that bias (1024 values,
    as Silero VAD's) is no float layer, as it is none in the main graph."""
    result = onnxquant.quantize(tiny_if_network(hidden=128, lstm_bias=True), if_samples(8),
                                onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert result.quantized_nodes["LSTM"] == 2
    assert not [f for f in result.float_nodes if "LSTM" in f.op_type]


def test_branch_no_sample_took_keeps_int8_weights_with_reason():
    model = tiny_if_network()
    result = onnxquant.quantize(model, if_samples(8, flags=(True,)))
    reasons = result.weight_only
    assert "calibration never saw" in reasons["by_rate/else_branch/else_conv2"]
    assert "by_rate/then_branch/then_conv2" not in reasons  # calibrated: an integer kernel
    assert _float_weight_bytes(result.model) < 0.1 * _float_weight_bytes(model)
    feed = {**if_samples(1, seed=5)[0], "flag": np.array(False)}
    assert _sqnr(run(model, feed)[0], run(result.model, feed)[0]) > 30


def test_a_branch_no_sample_took_keeps_its_int8_weights_through_the_self_check():
    """Its layers are int8 weights before float kernels on purpose: the self-check neither counts
    them as float islands nor re-plans them float (their weights would be fp32 again)."""
    result = onnxquant.quantize(tiny_if_network(), if_samples(8, flags=(True,)),
                                onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert (result.fusion.quantized_layers, result.fusion.integer_layers) == (2, 2)
    assert {"by_rate/else_branch/else_conv1", "by_rate/else_branch/else_conv2"} <= set(result.weight_only)
    assert not [f for f in result.float_nodes if f.weight_bytes]


def test_loop_body_matmul_is_calibrated_over_iterations(tmp_path: Path):
    model = tiny_loop_matmul()
    samples = [{"x": np.random.default_rng(i).normal(size=(1, 16)).astype(np.float32)} for i in range(8)]
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS)
    assert result.quantized_nodes.get("MatMul") == 2 and not result.weight_only
    ops = _optimized_ops(result.model, tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 2 and "DequantizeLinear" not in ops  # fused, also in the body
    feed = {"x": np.random.default_rng(99).normal(size=(1, 16)).astype(np.float32)}
    assert _sqnr(run(model, feed)[0], run(result.model, feed)[0]) > 25


def test_scan_body_matmul_is_calibrated_and_fused(tmp_path: Path):
    model = tiny_scan_matmul()
    rng = np.random.default_rng(3)
    samples = [{"h0": np.zeros((1, 16), np.float32), "x": rng.normal(size=(6, 1, 16)).astype(np.float32)}
               for _ in range(8)]
    result = onnxquant.quantize(model, samples)
    assert result.quantized_nodes.get("MatMul") == 1 and not result.weight_only
    assert "QLinearMatMul" in _optimized_ops(result.model, tmp_path)  # with the Relu folded in
    feed = {"h0": np.zeros((1, 16), np.float32), "x": rng.normal(size=(9, 1, 16)).astype(np.float32)}
    for ref, got in zip(run(model, feed), run(result.model, feed)):
        assert _sqnr(ref, got) > 25


def _loop_with_carried_weight() -> onnx.ModelProto:
    """A Loop whose Gemm reads its weight as a loop-carried value (how paddle2onnx writes SLANet)."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Gemm", ["h", "w"], ["h_next"], name="step_gemm"),
         helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["w"], ["w_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", f, [1, 8]), helper.make_tensor_value_info("w", f, [8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_next", f, [1, 8]),
         helper.make_tensor_value_info("w_out", f, [8, 8])])
    weight = np.random.default_rng(0).normal(0, 0.3, (8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x", "w0"], ["y", "w_last"], name="loop", body=body)], "g",
        [helper.make_tensor_value_info("x", f, [1, 8])], [helper.make_tensor_value_info("y", f, [1, 8])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(weight, "w0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_loop_carried_weight_is_told_as_such():
    """The float layer's reason says where its weight comes from, so the user can find it."""
    samples = [{"x": np.random.default_rng(i).normal(size=(1, 8)).astype(np.float32)} for i in range(4)]
    result = onnxquant.quantize(_loop_with_carried_weight(), samples)
    reasons = {n.name: n.reason for n in result.float_nodes}
    gemm = next(name for name in reasons if name.endswith("step_gemm"))
    assert "loop-carried value" in reasons[gemm], reasons


def _outer_feed(kind: str, rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
    if kind == "scan":
        return {"x": rng.normal(size=(5, 1, 64)).astype(np.float32)}
    feed = {"x": rng.normal(size=(1, 64)).astype(np.float32)}
    if kind == "if":
        feed["flag"] = np.array(index % 2 == 0)
    return feed


def _dq_reads_outside(model: onnx.ModelProto) -> list[str]:
    """DequantizeLinear inputs a body reads from an enclosing graph (onnxruntime 1.32 looks a
    DQ->MatMul weight up among the body's own initializers and refuses the model)."""
    out = []
    for graph in list(iter_graphs(model.graph))[1:]:
        own = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
        out += [i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.input if i and i not in own]
    return out


@pytest.mark.parametrize("kind", ["loop", "if", "scan"])
@pytest.mark.parametrize("integer", [False, True])
def test_body_matmul_reading_a_main_graph_weight_runs_and_stays_int8(kind: str, integer: bool):
    model = tiny_outer_weight_body(kind)
    rng = np.random.default_rng(1)
    samples = [_outer_feed(kind, rng, i) for i in range(8)]
    # int8 weights in front of float MatMuls, whatever this host's estimate would choose
    float_compute = INTEGER_KERNELS.with_overrides(quantization={"integer_compute": False})
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS if integer else float_compute)
    assert result.quantized_nodes.get("MatMul") == {"loop": 2, "if": 3, "scan": 1}[kind]
    assert not _dq_reads_outside(result.model)
    if not integer:  # the outer weight's dequantization sits in the main graph, which stores it
        main_dq = {o for n in result.model.graph.node if n.op_type in ("DequantizeLinear", "Mul") for o in n.output}
        body_reads = {i for g in list(iter_graphs(result.model.graph))[1:] for n in g.node if n.op_type == "MatMul"
                      for i in n.input}
        assert main_dq & body_reads
    assert _float_weight_bytes(result.model) < 0.1 * _float_weight_bytes(model)  # scales only
    int8_weights = [t.name for g in iter_graphs(result.model.graph) for t in g.initializer
                    if t.data_type == onnx.TensorProto.INT8 and list(t.dims) == [64, 64]]
    # stored once, where the float weight was; but integer kernels need their weight inside the
    # body, so each If branch running one keeps a copy of its own
    assert len(int8_weights) == {"loop": 2, "if": 2, "scan": 1}[kind] + (integer and kind == "if")
    if not (integer and kind == "if"):
        assert result.size_after < 0.33 * result.size_before
    for index in range(2):
        feed = _outer_feed(kind, rng, index)
        for ref, got in zip(run(model, feed), run(result.model, feed)):
            assert _sqnr(ref, got) > (15 if integer else 30)
