"""The QNN HTP simulator (onnxruntime-qnn on x86_64): real compilation for the NPU, no device.

Requires the ``qnn`` extra, which CI installs: these tests do not skip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.tiny import attention_samples, tiny_attention
from onnxquant.api import quantize
from onnxquant.errors import UsageError
from onnxquant.recipe import recipe_for_target
from onnxquant.validate import Budget, validate


def _samples_dir(tmp_path: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, s in enumerate(samples):
        np.savez(folder / f"s{i:02d}.npz", **s)
    return folder


def test_cnn_for_qnn_runs_every_node_on_the_npu(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    out = tmp_path / "cnn.qnn.onnx"
    result = quantize(cnn_path, npz_dir, recipe_for_target("qnn"), out)
    assert any("input shapes fixed to x [1, 3, 16, 16]" in n for n in result.notes)
    report = validate(cnn_path, out, npz_dir, ("qnn", "cpu"), Budget(min_cosine=0.98, require_on_ep=True),
                      max_samples=4, latency_runs=1)
    assert report.passed, report.failures
    qnn = report.to_dict()["providers"][0]
    assert qnn["compressed"]["placement"]["fallback_nodes"] == 0
    assert qnn["compressed"]["placement"]["nodes_on_ep"] > 20
    assert qnn["fixed_shapes"] == {"x": [1, 3, 16, 16]}


def test_a_latency_budget_on_the_htp_simulator_is_not_a_pass(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    """On x86-64, QNN's HTP is a simulator: its timing is no device's, so a latency budget is not checked."""
    out = tmp_path / "cnn.qnn.onnx"
    quantize(cnn_path, npz_dir, recipe_for_target("qnn"), out)
    report = validate(cnn_path, out, npz_dir, ("qnn",), Budget(max_latency_ratio=1000.0), max_samples=2,
                      latency_runs=1)
    assert not report.passed
    (qnn,) = report.providers
    assert any("latency budget not checked" in f for f in qnn.failures)
    assert any("HTP simulator" in n for n in qnn.notes)


def test_cpu_placement_leaves_float_ops_that_qnn_sends_back(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    """The CPU target keeps the final Gemm's output float: QNN cannot take that node."""
    out = tmp_path / "cnn.cpu.onnx"
    quantize(cnn_path, npz_dir, output=out)
    report = validate(cnn_path, out, npz_dir, ("qnn",), Budget(require_on_ep=True), max_samples=2, latency_runs=1)
    assert not report.passed
    assert any("fell back to the CPU" in f for f in report.failures)


def test_transformer_block_masks_and_gelu_stay_on_the_npu(tmp_path: Path):
    model_path = tmp_path / "attention.onnx"
    onnx.save(tiny_attention(), str(model_path))
    data = _samples_dir(tmp_path, attention_samples(12))
    out = tmp_path / "attention.qnn.onnx"
    result = quantize(model_path, data, recipe_for_target("qnn"), out)
    assert any("1 GELU patterns fused" in n for n in result.notes)
    report = validate(model_path, out, data, ("qnn",), Budget(min_cosine=0.95, require_on_ep=True), latency_runs=1)
    assert report.passed, report.failures


def test_samples_of_another_shape_fail_validation_clearly(tmp_path: Path):
    model_path = tmp_path / "attention.onnx"
    onnx.save(tiny_attention(), str(model_path))
    out = tmp_path / "attention.qnn.onnx"
    quantize(model_path, attention_samples(4, seq=6), recipe_for_target("qnn"), out)
    mixed = _samples_dir(tmp_path, attention_samples(2, seq=6) + attention_samples(1, seq=5))
    report = validate(model_path, out, mixed, ("qnn",), latency_runs=1)
    assert any("sample 2 has input shapes" in f and "fixed shapes" in f for f in report.failures), report.failures


def test_samples_of_several_shapes_for_a_fixed_shape_target_say_where_the_shape_came_from(tmp_path: Path):
    """The model has a free sequence dim; QNN fixes it from the first sample: the error says so,
    not just "the model expects" a shape the model does not have."""
    from onnxquant.errors import CalibrationDataError

    model_path = tmp_path / "attention.onnx"
    onnx.save(tiny_attention(), str(model_path))
    mixed = _samples_dir(tmp_path, attention_samples(2, seq=6) + attention_samples(1, seq=5))
    with pytest.raises(CalibrationDataError, match="taken from the first sample"):
        quantize(model_path, mixed, recipe_for_target("qnn"), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_fixed_shape_target_without_data_needs_shapes(tmp_path: Path, npz_dir: Path, cnn_path: Path):
    stats = tmp_path / "stats.npz"
    quantize(cnn_path, npz_dir, recipe_for_target("qnn"), save_stats_to=stats)
    with pytest.raises(UsageError, match="--input-shape"):
        quantize(cnn_path, None, recipe_for_target("qnn"), stats=stats)
    recipe = recipe_for_target("qnn").with_overrides(input_shapes={"x": [1, 3, 16, 16]})
    assert quantize(cnn_path, None, recipe, stats=stats).quantized_nodes["Conv"] == 3


def test_recurrent_model_for_qnn_loads_and_runs_its_lstm_on_the_htp(tmp_path: Path):
    """onnxruntime's QNN EP takes a float LSTM, which the HTP compiles only in fp16: validate
    retries with fp16 precision (a device's default) instead of calling the model unloadable."""
    from models.tiny_control_flow import recurrent_samples, tiny_recurrent

    src = tmp_path / "lstm.onnx"
    onnx.save(tiny_recurrent("LSTM"), src)
    samples = _samples_dir(tmp_path, recurrent_samples(16))
    out = tmp_path / "lstm.qnn.onnx"
    result = quantize(src, samples, recipe_for_target("qnn"), out)
    assert any("recurrent layers: 1 (LSTM)" in n and "QNN EP has no int8 LSTM" in n for n in result.notes)
    report = validate(src, out, samples, ("qnn",), Budget(min_cosine=0.98), latency_runs=1)
    assert report.passed, report.failures
    qnn = report.to_dict()["providers"][0]
    assert qnn["compressed"]["loaded"] and qnn["compressed"]["placement"]["ops_on_ep"].get("LSTM") == 1
    assert qnn["original"]["cosine_to_cpu"]["min"] > 0.99  # the fp32 original on the HTP, in fp16, against the CPU
    if qnn["compressed"]["placement"].get("htp_fp16"):
        assert any("only in fp16 precision" in n for n in qnn["notes"])
