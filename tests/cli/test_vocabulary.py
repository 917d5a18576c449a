"""One name per concept: a flag is its recipe, job or budget key with dashes; old spellings still
work for one release, with a note on stderr."""
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxquant.cli import main
from onnxquant.cli.command import renamed_args
from onnxquant.compress import PackageSettings, ValidateSettings
from onnxquant.recipe import PruneSettings, QuantizationSettings, SearchSettings


def _flags(command: str) -> set[str]:
    return {opt for param in main.commands[command].params for opt in (*param.opts, *param.secondary_opts)}


def _key_flags(settings: type) -> set[str]:
    return {"--" + f.name.replace("_", "-") for f in dataclasses.fields(settings)}


@pytest.mark.parametrize(("command", "settings", "without_flag"), [
    ("quantize", QuantizationSettings, set()),
    ("prune", PruneSettings, {"--reconstruct"}),
    ("validate", ValidateSettings, {"--providers", "--output-kinds"}),  # --ep and --output-kind: repeatable
    ("package", PackageSettings, {"--html-beside"}),  # compress only
])
def test_every_settings_key_has_its_flag_spelled_alike(command: str, settings: type, without_flag: set[str]):
    assert _key_flags(settings) - without_flag <= _flags(command)


def test_search_keys_are_quantize_flags_under_search():
    keys = {"--search-" + f.name.replace("_", "-") for f in dataclasses.fields(SearchSettings)} - {"--search-enabled"}
    assert keys | {"--search", "--no-search"} <= _flags("quantize")


def test_job_keys_are_quantize_flags():
    assert {"--calib-data", "--holdout", "--max-drop", "--drop-by", "--threads", "--max-memory", "--output"} <= _flags("quantize")


def test_renamed_args_replaces_old_spellings_once_each():
    args, notes = renamed_args(["--data", "d", "--min-sqnr=9", "--data", "e", "--", "--data"],
                               {"--data": "--holdout", "--min-sqnr": "--min-sqnr-db"})
    assert args == ["--holdout", "d", "--min-sqnr-db=9", "--holdout", "e", "--", "--data"]
    assert notes == ["--data is now --holdout; the old spelling works until the next release",
                     "--min-sqnr is now --min-sqnr-db; the old spelling works until the next release"]


def test_old_spellings_work_with_a_note_on_stderr_only(cnn_path: Path, quantized_path: Path, npz_dir: Path):
    old = CliRunner().invoke(main, ["validate", str(cnn_path), str(quantized_path), "--data", str(npz_dir),
                                    "--min-sqnr", "1", "--no-budgets", "--latency-runs", "1", "--json"])
    new = CliRunner().invoke(main, ["validate", str(cnn_path), str(quantized_path), "--holdout", str(npz_dir),
                                    "--min-sqnr-db", "1", "--no-default-budgets", "--latency-runs", "1", "--json"])
    assert old.exit_code == new.exit_code == 0, old.output
    assert old.stderr.splitlines() == [
        "note: --data is now --holdout; the old spelling works until the next release",
        "note: --min-sqnr is now --min-sqnr-db; the old spelling works until the next release",
        "note: --no-budgets is now --no-default-budgets; the old spelling works until the next release"]
    assert new.stderr == ""
    report = json.loads(old.stdout)
    assert report["budget"] == json.loads(new.stdout)["budget"] == {"min_sqnr_db": 1.0}
    assert report["default_budgets"] is False
    quiet = CliRunner().invoke(main, ["validate", str(cnn_path), str(quantized_path), "--data", str(npz_dir),
                                      "--latency-runs", "1", "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_old_quantize_spellings_set_the_same_keys(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "q.onnx"), "--calib-data", str(npz_dir),
                                       "--activation-type", "int8", "--symmetric-activations", "--int4-min-sqnr", "12",
                                       "--json"])
    assert result.exit_code == 0, result.output
    quantization = json.loads(result.stdout)["recipe"]["quantization"]
    assert quantization["activation_symmetric"] is True and quantization["int4_min_sqnr_db"] == 12.0
    assert len(result.stderr.splitlines()) == 2 and "--activation-symmetric" in result.stderr


def test_package_arm_flag_is_the_job_key(quantized_path: Path, tmp_path: Path):
    arm = CliRunner().invoke(main, ["package", str(quantized_path), "-o", str(tmp_path / "a.zip"), "--arm", "--json"])
    anywhere = CliRunner().invoke(main, ["package", str(quantized_path), "-o", str(tmp_path / "b.zip"), "--any-platform",
                                         "--json"])
    assert arm.exit_code == anywhere.exit_code == 0, arm.output + anywhere.output
    assert json.loads(arm.stdout)["ort"]["platform"] == "arm"
    assert json.loads(anywhere.stdout)["ort"]["platform"] == "any"
