"""Validation on the CPU provider, budgets and exit codes (QNN: tests/test_qnn.py)."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxquant.api import quantize
from onnxquant.cli import main
from onnxquant.errors import UsageError
from onnxquant.recipe import recipe_for_target
from onnxquant.validate import Budget, boundary_nodes, validate


@pytest.fixture
def quantized_cnn(cnn_path: Path, npz_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cnn.int8.onnx"
    quantize(cnn_path, npz_dir, output=out)
    return out


def _run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cpu_report_has_agreement_latency_and_size(cnn_path: Path, quantized_cnn: Path, npz_dir: Path):
    report = validate(cnn_path, quantized_cnn, npz_dir, ("cpu",), latency_runs=3)
    data = report.to_dict()
    assert report.passed and data["samples"] == 12
    cpu = data["providers"][0]
    logits = cpu["agreement"]["logits"]
    assert logits["samples"] == 12 and 0.9 < logits["cosine"] <= 1.0 and logits["top1"] >= 0.75
    assert isinstance(logits["sqnr_db"], float) and logits["sqnr_db"] > 10
    assert cpu["compressed"]["latency_ms"]["runs"] >= 12 and cpu["latency_ratio"] > 0
    assert data["size"]["compressed"] == quantized_cnn.stat().st_size
    assert data["size"]["original"] == cnn_path.stat().st_size
    json.dumps(data)  # JSON-ready: no infinities, no numpy types


def test_a_model_against_itself_is_exact(cnn_path: Path, npz_dir: Path):
    logits = validate(cnn_path, cnn_path, npz_dir, latency_runs=1).to_dict()["providers"][0]["agreement"]["logits"]
    assert logits["cosine"] == pytest.approx(1.0) and logits["max_abs_error"] == 0.0 and logits["sqnr_db"] == "inf"


def test_budgets_fail_with_a_reason(cnn_path: Path, quantized_cnn: Path, npz_dir: Path):
    report = validate(cnn_path, quantized_cnn, npz_dir, budget=Budget(min_cosine=1.0, max_abs_error=1e-9),
                      latency_runs=1)
    assert not report.passed
    assert any("cosine" in f for f in report.failures) and any("max abs error" in f for f in report.failures)


def test_unknown_provider_and_bad_budget_are_usage_errors(cnn_path: Path, quantized_cnn: Path, npz_dir: Path):
    with pytest.raises(UsageError):
        validate(cnn_path, quantized_cnn, npz_dir, ("tpu",))
    with pytest.raises(UsageError):
        Budget(min_cosine=2.0)


def test_boundary_nodes_are_the_input_q_and_output_dq(tmp_path: Path, cnn_path: Path, npz_dir: Path):
    out = tmp_path / "qnn_style.onnx"
    quantize(cnn_path, npz_dir, output=out, recipe=recipe_for_target("qnn"))
    model = onnx.load(str(out))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert sorted(ops[n] for n in boundary_nodes(model)) == ["DequantizeLinear", "QuantizeLinear"]


def test_cli_exit_codes(cnn_path: Path, quantized_cnn: Path, npz_dir: Path):
    ok = _run("validate", cnn_path, quantized_cnn, "--data", npz_dir, "--min-cosine", "0.9", "--latency-runs", "1")
    assert ok.exit_code == 0, ok.output
    assert "[cpu]" in ok.output and "PASS" in ok.output
    over = _run("validate", cnn_path, quantized_cnn, "--data", npz_dir, "--min-cosine", "0.99999999", "--latency-runs", "1")
    assert over.exit_code == 6 and "FAIL cpu: output 'logits' (classification): cosine" in over.output
    as_json = _run("validate", cnn_path, quantized_cnn, "--data", npz_dir, "--json", "--latency-runs", "1")
    assert json.loads(as_json.output)["passed"] is True


@pytest.mark.skipif("OpenVINOExecutionProvider" in ort.get_available_providers(), reason="OpenVINO is installed here")
def test_missing_provider_is_reported_never_replaced(cnn_path: Path, quantized_cnn: Path, npz_dir: Path):
    result = _run("validate", cnn_path, quantized_cnn, "--data", npz_dir, "--ep", "cpu", "--ep", "openvino",
                  "--json", "--latency-runs", "1")
    assert result.exit_code == 7
    data = json.loads(result.output.split("\nerror:")[0]) if "\nerror:" in result.output else json.loads(result.output)
    openvino = next(p for p in data["providers"] if p["ep"] == "openvino")
    assert openvino["available"] is False and "onnxruntime-openvino" in openvino["reason"]
    assert data["unavailable"] == ["openvino"]


def test_data_that_does_not_fit_is_a_data_error(cnn_path: Path, quantized_cnn: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("validate", cnn_path, quantized_cnn, "--data", empty)
    assert result.exit_code == 4 and result.output.startswith("error:")
