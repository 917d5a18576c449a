"""OpenVINO's execution provider. Its onnxruntime build replaces the plain one, so these run in
a second virtual environment that .ci/run creates (ONNXQUANT_EXPECT_OPENVINO=1 there: a missing
provider then fails instead of skipping)."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

from onnxquant.api import quantize
from onnxquant.recipe import recipe_for_target
from onnxquant.validate import Budget, validate

AVAILABLE = "OpenVINOExecutionProvider" in ort.get_available_providers()
pytestmark = pytest.mark.skipif(not AVAILABLE and not os.environ.get("ONNXQUANT_EXPECT_OPENVINO"),
                                reason="onnxruntime-openvino is not installed in this environment")


def test_cnn_for_openvino_runs_fully_on_openvino(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    assert AVAILABLE, "onnxruntime-openvino was expected here"
    out = tmp_path / "cnn.openvino.onnx"
    quantize(cnn_path, npz_dir, recipe_for_target("openvino"), out)
    report = validate(cnn_path, out, npz_dir, ("openvino", "cpu"), Budget(min_cosine=0.98, require_on_ep=True),
                      latency_runs=2)
    assert report.passed, report.failures
    openvino = report.to_dict()["providers"][0]
    assert openvino["compressed"]["placement"]["nodes_on_ep"] > 0
    assert openvino["compressed"]["placement"]["fallback_nodes"] == 0
