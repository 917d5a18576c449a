from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxquant.cli import main
from onnxquant.compress import compress, load_job
from onnxquant.errors import BudgetExceededError, UsageError
from tests.ship.conftest import write_job


def _run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_one_command_from_model_to_validated_bundle(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    job = write_job(tmp_path, cnn_path, npz_dir, '[validate]\nmin_cosine = 0.9\nlatency_runs = 2\n'
                                                 '[prune]\nsparsity = 0.2\n')
    result = compress(load_job(job))
    assert result.output == tmp_path / "out" / "bundle.zip"
    with zipfile.ZipFile(result.output) as bundle:
        names = set(bundle.namelist())
        report = json.loads(bundle.read("report.json"))
        assert bundle.read("recipe.toml").decode() == job.read_text()
    assert {"model.onnx", "model.ort", "required_operators.config", "report.html", "manifest.json"} <= names
    assert report["validation"]["passed"] and report["validation"]["budget"] == {"min_cosine": 0.9}
    with zipfile.ZipFile(result.output) as bundle:
        validated = json.loads(bundle.read("manifest.json"))["validated"]
    logits = validated["outputs"]["cpu"]["logits"]
    assert validated["samples"] == report["validation"]["samples"] > 0 and validated["default_budgets"] is True
    assert logits["kind"] == "classification" and "top1" in logits
    assert {(c["budget"], c["source"]) for c in logits["checks"]} == {
        ("min_top1", "default"), ("max_kl", "default"), ("min_cosine", "given")}
    assert report["quantization"]["pruning"]["sparsity"] > 0.1
    assert report["layer_errors"] and report["activation_histograms"] and report["weight_histograms"]
    # every activation histogram's range is the one its QuantizeLinear uses, and it holds the data
    assert all(h["clip_lo"] <= 0 <= h["clip_hi"] and sum(h["counts"]) > 0 for h in report["activation_histograms"])
    assert result.html == tmp_path / "out" / "bundle.report.html" and result.html.read_text().startswith("<!DOCTYPE html>")


def test_model_files_in_the_bundle_are_reproducible(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    hashes = []
    for name in ("a", "b"):
        job = write_job(tmp_path, cnn_path, npz_dir, "[validate]\nlatency_runs = 1\n", output=f"{name}.zip")
        manifest = json.loads(zipfile.ZipFile(compress(load_job(job)).output).read("manifest.json"))
        hashes.append({f["name"]: f["sha256"] for f in manifest["files"] if f["name"].startswith(("model", "required"))})
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3


def test_a_failed_budget_stops_and_writes_nothing(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    job = write_job(tmp_path, cnn_path, npz_dir, "[validate]\nmax_abs_error = 1e-12\nlatency_runs = 1\n")
    with pytest.raises(BudgetExceededError, match="max abs error|max_abs_error|abs") as caught:
        compress(load_job(job))
    assert caught.value.report["validation"]["passed"] is False
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes_and_json_on_failure(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    job = write_job(tmp_path, cnn_path, npz_dir, "[validate]\nmax_abs_error = 1e-12\nlatency_runs = 1\n")
    result = _run("compress", job, "--json")
    assert result.exit_code == 6
    payload = json.loads(result.output[: result.output.rindex("}") + 1])
    assert payload["passed"] is False and payload["report"]["validation"]["failures"]
    assert not (tmp_path / "out").exists()

    ok = write_job(tmp_path, cnn_path, npz_dir, "[validate]\nlatency_runs = 1\n")
    result = _run("compress", ok, "-q")
    assert result.exit_code == 0 and result.output == "" and (tmp_path / "out" / "bundle.zip").exists()


def test_stops_at_the_first_unavailable_provider(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("OpenVINO is installed here")
    job = write_job(tmp_path, cnn_path, npz_dir, '[validate]\nproviders = ["cpu", "openvino"]\nlatency_runs = 1\n')
    result = _run("compress", job)
    assert result.exit_code == 7 and "openvino" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, message", [
    ("[validate]\nproviders = []\n", "at least one"),
    ("[validate]\nmin_top1 = 2\n", "between 0 and 1"),
    ("[validate]\nmin_cosine = nan\n", "finite"),
    ("[validate]\nmin_sqnr_db = inf\n", "finite"),
    ("[validate]\nmax_samples = 0\n", "at least 1"),
    ("[validate]\noutput_kinds = { logits = \"colour\" }\n", "unknown"),
    ("[validate]\nmetric = \"no_such_module_here:score\"\n", "cannot import"),
    ("[validate]\nbogus = 1\n", "unknown key"),
    ("[package]\nort_optimization = \"fast\"\n", "unknown"),
    ("[calibration]\nmethod = \"guess\"\n", "unknown"),
    ("max_drop = -1\n", "max_drop"),
])
def test_bad_job_files_are_usage_errors(cnn_path: Path, npz_dir: Path, tmp_path: Path, body: str, message: str):
    job = write_job(tmp_path, cnn_path, npz_dir, body)
    result = _run("compress", job)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_required_keys(tmp_path: Path):
    job = tmp_path / "job.toml"
    job.write_text('model = "m.onnx"\n')
    with pytest.raises(UsageError, match="calib_data"):
        load_job(job)
    with pytest.raises(UsageError, match="not found"):
        load_job(tmp_path / "nope.toml")
