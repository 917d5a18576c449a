from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_a_malformed_recipe_stamp_is_bundled_without_a_traceback(quantized_path: Path, tmp_path: Path):
    from onnxquant.recipe import RECIPE_KEY

    model = onnx.load(str(quantized_path))
    for text in ('{"cpu":{"kind":[1]}}', '{"quantization":5}'):
        for prop in model.metadata_props:
            if prop.key == RECIPE_KEY:
                prop.value = text
        path = tmp_path / "odd.onnx"
        onnx.save(model, str(path))
        bundle = tmp_path / f"odd{len(text)}.zip"
        result = _run("package", path, "-o", bundle)
        assert result.exit_code == 0 and result.exception is None, result.output
        assert json.loads(_zip_files(bundle)["recipe.json"]) is not None


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


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> tuple[Path, dict]:
    """A quantized model and its real `validate --json` report."""
    from models.tiny import image_samples, tiny_cnn
    from onnxquant.api import quantize
    from tests.conftest import write_npz

    folder = tmp_path_factory.mktemp("validated")
    onnx.save(tiny_cnn(), str(folder / "m.onnx"))
    calib = write_npz(folder / "calib", image_samples(3))
    quantize(folder / "m.onnx", calib, output=folder / "q.onnx")
    result = _run("validate", folder / "m.onnx", folder / "q.onnx", "--holdout", calib, "--json", "--latency-runs", "1")
    return folder / "q.onnx", json.loads(result.output)


def _paths(data, prefix=()):
    """Every key path in nested dicts and lists."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for k, value in enumerate(data):
            yield from _paths(value, (*prefix, k))

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_tampered_validation_report_is_one_line(validated, tmp_path_factory, data):
    """Any field of a real report replaced by a value of another type or deleted: the bundle is
    made (a harmless change), refused as a failed validation (6), or refused as a bad file (2)."""
    import copy

    model, report = validated
    report = copy.deepcopy(report)
    paths = [p for p in _paths(report) if p]
    path = data.draw(st.sampled_from(paths))
    parent = report
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JUNK)
    folder = tmp_path_factory.mktemp("tampered")
    (folder / "v.json").write_text(json.dumps(report))
    result = _run("package", model, "-o", folder / "b.zip", "--validation", folder / "v.json")
    assert result.exit_code in (0, 2, 6), (path, result.output)
    if result.exit_code:
        assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
        assert not (folder / "b.zip").exists()
