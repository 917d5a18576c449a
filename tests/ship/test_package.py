from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxquant.cli import main
from onnxquant.errors import ModelError, UsageError
from onnxquant.package import package
from onnxquant.validate import Budget, validate


def _run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _zip_files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def test_zip_bundle_holds_everything_and_the_manifest_hashes_it(quantized_path: Path, tmp_path: Path):
    result = package(quantized_path, tmp_path / "bundle.zip", recipe_text="[calibration]\nmethod = \"minmax\"\n")
    files = _zip_files(tmp_path / "bundle.zip")
    assert set(files) == {"manifest.json", "model.onnx", "model.ort", "required_operators.config", "report.json",
                          "report.html", "recipe.json", "recipe.toml"}
    assert files["model.onnx"] == quantized_path.read_bytes()
    manifest = json.loads(files["manifest.json"])
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest() and entry["bytes"] == len(files[name])
    assert manifest["tool"]["onnxquant"] and manifest["tool"]["onnxruntime"]
    assert manifest["ort_format"]["optimization_level"] == "all"  # the recipe's target is cpu
    assert json.loads(files["recipe.json"])["target"] == "cpu"
    assert manifest["validated"] is None and result.report["validation"] is None


def test_same_inputs_give_a_byte_identical_bundle(quantized_path: Path, tmp_path: Path):
    copy = tmp_path / "elsewhere" / quantized_path.name
    copy.parent.mkdir()
    copy.write_bytes(quantized_path.read_bytes())
    package(quantized_path, tmp_path / "one.zip")
    package(copy, tmp_path / "two" / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two" / "two.zip").read_bytes()


def test_folder_bundle_matches_the_zip(quantized_path: Path, tmp_path: Path):
    package(quantized_path, tmp_path / "bundle.zip")
    package(quantized_path, tmp_path / "bundle")
    folder = {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()}
    assert folder == _zip_files(tmp_path / "bundle.zip")
    assert (tmp_path / "bundle").stat().st_mode & 0o755 == 0o755


def test_validation_report_goes_into_the_bundle(cnn_path: Path, quantized_path: Path, npz_dir: Path, tmp_path: Path):
    report = validate(cnn_path, quantized_path, npz_dir, latency_runs=2).to_dict()
    result = package(quantized_path, tmp_path / "b.zip", validation=report)
    assert result.manifest["validated"]["passed"] is True and result.manifest["validated"]["providers"] == ["cpu"]
    html = _zip_files(tmp_path / "b.zip")["report.html"].decode()
    assert "PASS" in html and "Latency before and after" in html


def test_refusals_leave_nothing_behind(quantized_path: Path, tmp_path: Path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        package(quantized_path, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(quantized_path.read_bytes()[:200])
    with pytest.raises(ModelError):
        package(bad, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_refuses_a_failed_validation(cnn_path: Path, quantized_path: Path, npz_dir: Path, tmp_path: Path):
    failed = validate(cnn_path, quantized_path, npz_dir, latency_runs=1, budget=Budget(max_abs_error=1e-12)).to_dict()
    assert not failed["passed"]
    (tmp_path / "v.json").write_text(json.dumps(failed))
    result = _run("package", quantized_path, "-o", tmp_path / "b.zip", "--validation", tmp_path / "v.json")
    assert result.exit_code == 6 and "did not pass" in result.output
    assert not (tmp_path / "b.zip").exists()
    (tmp_path / "junk.json").write_text("{not json")
    result = _run("package", quantized_path, "-o", tmp_path / "b.zip", "--validation", tmp_path / "junk.json")
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_cli_lists_files_and_quiet_prints_nothing(quantized_path: Path, tmp_path: Path):
    result = _run("package", quantized_path, "-o", tmp_path / "b.zip")
    assert result.exit_code == 0, result.output
    assert "model.ort" in result.output and "required_operators.config" in result.output
    quiet = _run("package", quantized_path, "-o", tmp_path / "c.zip", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    assert (tmp_path / "b.zip").read_bytes() == (tmp_path / "c.zip").read_bytes()


def test_input_model_is_not_modified(quantized_path: Path, tmp_path: Path):
    before = quantized_path.read_bytes()
    package(quantized_path, tmp_path / "b.zip")
    assert quantized_path.read_bytes() == before
    onnx.checker.check_model(str(quantized_path))
