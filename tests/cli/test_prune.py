import json
from pathlib import Path

import onnx

from tests.cli.test_quantize import _run


def test_prune_command_reports_each_layer_and_writes_the_model(mbconv_path: Path, mbconv_data: Path, tmp_path: Path):
    out = tmp_path / "p.onnx"
    result = _run("prune", mbconv_path, "-o", out, "--sparsity", "0.5", "--channels", "0.25", "--calib-data", mbconv_data,
                  "--channel-multiple", "1")
    assert result.exit_code == 0, result.output
    assert "channels removed: 6 from 2 layers" in result.output and "compressed" in result.output
    assert "not pruned: 1 layers (depthwise" in result.output
    onnx.checker.check_model(onnx.load(str(out)))
    data = json.loads(_run("prune", mbconv_path, "-o", out, "--pattern", "2:4", "--json").output)
    assert {layer["node"] for layer in data["layers"]} == {"expand", "project", "head", "fc"}
    assert data["size_compressed_after"] > 0 and data["settings"]["pattern"] == "2:4"


def test_prune_errors_are_one_line_with_exit_codes(mbconv_path: Path, tmp_path: Path):
    out = tmp_path / "p.onnx"
    nothing = _run("prune", mbconv_path, "-o", out)
    assert nothing.exit_code == 2 and nothing.output.startswith("error: nothing to prune")
    both = _run("prune", mbconv_path, "-o", out, "--sparsity", "0.5", "--threshold", "0.1")
    assert both.exit_code == 2 and "one of sparsity, threshold" in both.output
    wanda = _run("prune", mbconv_path, "-o", out, "--sparsity", "0.5", "--method", "wanda")
    assert wanda.exit_code == 2 and "calibration data" in wanda.output
    search = _run("prune", mbconv_path, "-o", out, "--max-drop", "0.01")
    assert search.exit_code == 2 and "--calib-data" in search.output
    assert not out.exists()
    assert all("Traceback" not in r.output for r in (nothing, both, wanda, search))


def test_quantize_takes_a_prune_step_from_flags_or_recipe(mbconv_path: Path, mbconv_data: Path, tmp_path: Path):
    flags = _run("quantize", mbconv_path, "-o", tmp_path / "a.onnx", "--calib-data", mbconv_data,
                 "--prune-sparsity", "0.5", "--json")
    assert flags.exit_code == 0, flags.output
    recipe = tmp_path / "r.toml"
    recipe.write_text("[prune]\nsparsity = 0.5\n")
    from_file = _run("quantize", mbconv_path, "-o", tmp_path / "b.onnx", "--calib-data", mbconv_data, "--recipe", recipe,
                     "--json")
    a, b = json.loads(flags.output), json.loads(from_file.output)
    assert a["pruning"]["sparsity"] >= 0.5 and a["recipe"]["prune"]["sparsity"] == 0.5 and b["pruning"] == a["pruning"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
