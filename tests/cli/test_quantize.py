import json
from pathlib import Path

from click.testing import CliRunner

from onnxquant.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_quantize_prints_a_summary(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    out = tmp_path / "q.onnx"
    result = _run("quantize", cnn_path, "-o", out, "--calib-data", npz_dir)
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "size:" in result.output and "quantized: 10 nodes" in result.output and "Conv 3" in result.output


def test_json_for_scripts(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", npz_dir, "--json", "--calibration", "mse")
    data = json.loads(result.output)
    assert data["quantized_nodes"]["Conv"] == 3 and data["recipe"]["calibration"]["method"] == "mse"
    assert data["size_before"] == cnn_path.stat().st_size
    assert data["size_after"] == (tmp_path / "q.onnx").stat().st_size


def test_recipe_file_and_flags(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[calibration]\nmethod = "percentile"\npercentile = 99.9\n[nodes]\nexclude = ["op:Gemm"]\n')
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", npz_dir, "--recipe", recipe, "--json")
    data = json.loads(result.output)
    assert data["recipe"]["calibration"] == {"method": "percentile", "percentile": 99.9}
    assert "Gemm" not in data["quantized_nodes"]
    assert any(n["op_type"] == "Gemm" and "excluded" in n["reason"] for n in data["float_nodes"])


def test_errors_are_one_line_with_exit_codes(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"\x08\x07garbage")
    cases = [
        (("quantize", bad_model, "-o", tmp_path / "o.onnx", "--calib-data", npz_dir), 3),
        (("quantize", cnn_path, "-o", tmp_path / "o.onnx", "--calib-data", tmp_path / "missing"), 4),
        (("quantize", cnn_path, "-o", tmp_path / "o.onnx", "--calib-data", npz_dir, "--activation-type", "uint8",
          "--activation-symmetric"), 2),
    ]
    bad_recipe = tmp_path / "r.toml"
    bad_recipe.write_text("[calibration]\nmethdo = 'mse'\n")
    cases.append((("quantize", cnn_path, "-o", tmp_path / "o.onnx", "--calib-data", npz_dir, "--recipe", bad_recipe), 2))
    for args, code in cases:
        result = _run(*args)
        assert result.exit_code == code, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
        assert "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_every_quantization_setting_has_a_flag(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", npz_dir, "--json",
                  "--float-bias", "--no-reduce-range", "--per-tensor", "--weight-type", "uint8",
                  "--activation-type", "int8", "--activation-symmetric", "--max-samples", "5", "--op-types", "Conv,Relu",
                  "--weight-bits", "8", "--int4-block-size", "64", "--int4-min-sqnr-db", "15")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["recipe"]["quantization"] == {
        "activation_symmetric": True, "activation_type": "int8", "op_types": ["Conv", "Relu"], "per_channel": False,
        "quantize_bias": False, "reduce_range": False, "weight_type": "uint8", "weight_bits": 8,
        "int4_block_size": 64, "int4_min_sqnr_db": 15.0,
    }
    # Which Convs onnxruntime fuses with int8 activations depends on the CPU (the fusion self-check
    # keeps the others float): at least one Conv, nothing outside --op-types.
    assert data["calibration_samples"] == 5 and "Conv" in data["quantized_nodes"]
    assert set(data["quantized_nodes"]) <= {"Conv", "Relu"}
    assert data["fusion"]["integer_layers"] == data["fusion"]["quantized_layers"] == data["quantized_nodes"]["Conv"]


def test_image_folder_flags(cnn_path: Path, tmp_path: Path):
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", photos, "--json",
                  "--image-mean", "127,127,127", "--image-std", "128,128,128", "--image-resize", "20",
                  "--image-channel-order", "BGR")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["calibration_samples"] == 3
    assert data["recipe"]["preprocess"]["resize"] == 20 and data["recipe"]["preprocess"]["channel_order"] == "BGR"


def test_search_flags_reach_the_recipe_and_the_summary_says_what_was_chosen(cnn_path: Path, tmp_path: Path):
    from models.tiny import image_samples
    from tests.conftest import write_npz

    calib = write_npz(tmp_path / "calib32", image_samples(32))
    searched = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "s.onnx"), "--calib-data",
                                         str(calib), "--search-trials", "3"])
    assert searched.exit_code == 0, searched.output
    assert "note: recipe search: 3 trial(s) scored on 8 held-out calibration sample(s)" in searched.output
    as_json = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "j.onnx"), "--calib-data",
                                        str(calib), "--search-trials", "3", "--json"])
    report = json.loads(as_json.output)["search"]
    assert [t["name"] for t in report["trials"]] == ["as given", "percentile", "entropy"]
    assert (tmp_path / "s.onnx").read_bytes() == (tmp_path / "j.onnx").read_bytes()
    off = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "n.onnx"), "--calib-data",
                                    str(calib), "--no-search", "--json"])
    assert off.exit_code == 0 and "search" not in json.loads(off.output)
    assert json.loads(off.output)["calibration_samples"] == 32


def test_output_kind_is_checked_like_validates(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", npz_dir, "--output-kind", "out=vector")
    assert result.exit_code == 2 and "--output-kind" in result.output and "unknown" in result.output
    assert not (tmp_path / "q.onnx").exists()


def test_output_kind_for_an_output_the_model_lacks_is_refused_as_validate_does(cnn_path: Path, npz_dir: Path,
                                                                              tmp_path: Path):
    result = _run("quantize", cnn_path, "-o", tmp_path / "q.onnx", "--calib-data", npz_dir, "--output-kind", "typo=binary")
    assert result.exit_code == 2 and "['typo']" in result.output and "does not have" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_library_callers_get_a_usage_error_for_an_unknown_kind():
    import pytest

    from onnxquant.errors import UsageError
    from onnxquant.pipeline.run_data import RunData

    with pytest.raises(UsageError, match="unknown"):
        RunData(output_kinds={"out": "vector"})
    assert RunData(output_kinds=["out=binary"]).output_kinds == {"out": "binary"}
