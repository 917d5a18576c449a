from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.tiny import image_samples
from onnxquant.errors import ModelError
from onnxquant.ort_format import canonical_ort, convert_to_ort, required_operators


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_conversion_is_byte_identical_wherever_it_runs(quantized_path: Path, tmp_path: Path):
    other = tmp_path / "a" / "much" / "longer" / "folder" / "copy.onnx"
    other.parent.mkdir(parents=True)
    shutil.copy(quantized_path, other)
    first, second = convert_to_ort(quantized_path), convert_to_ort(other)
    assert first == second
    assert canonical_ort(first) == first  # canonical form is a fixed point


def test_ort_model_computes_what_the_onnx_model_does(quantized_path: Path, tmp_path: Path):
    ort_path = tmp_path / "model.ort"
    ort_path.write_bytes(convert_to_ort(quantized_path))
    feed = image_samples(1, seed=3)[0]
    np.testing.assert_allclose(_session(ort_path).run(None, feed)[0], _session(quantized_path).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", ["all", "basic"])
def test_required_operators_lists_what_the_ort_model_runs(quantized_path: Path, tmp_path: Path, level: str):
    ort_path = tmp_path / "model.ort"
    ort_path.write_bytes(convert_to_ort(quantized_path, level))
    config = required_operators(ort_path, "model.ort")
    assert config.startswith("# Generated from model/s:\n# - model.ort\n")
    assert str(tmp_path) not in config
    ops = {op for line in config.splitlines() if not line.startswith("#") for op in line.split(";")[2].split(",")}
    if level == "all":
        assert "QLinearConv" in ops  # int8 kernels fused on the CPU
    else:
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # Q/DQ units kept for an NPU provider


def test_unconvertible_model_is_a_model_error(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="ORT format"):
        convert_to_ort(bad)
