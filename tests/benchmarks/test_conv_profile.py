"""benchmarks/conv_profile.py finds each quantized Conv's kernel in both of onnxruntime's
profiles (the int8 QLinearConv, and the fp32 Conv named after the activation fused into it), so
every layer gets both times beside the estimate. No time is asserted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from benchmarks.conv_profile import profile_model, summary
from tests.test_conv_cost import _cnn


def test_every_conv_is_found_in_both_profiles(tmp_path: Path):
    model = tmp_path / "cnn.onnx"
    onnx.save(_cnn(16, 2, 24, 32), str(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        np.savez(calib / f"s{k}.npz", x=rng.normal(0, 1, (1, 3, 24, 32)).astype(np.float32))
    result = profile_model(model, calib, batch=2, runs=2)
    layers = {row["name"]: row for row in result["layers"]}
    assert sorted(layers) == ["dw0", "dw1", "pw0", "pw1", "stem"]
    assert {name: row["kind"] for name, row in layers.items()} == {
        "stem": "dense 3x3", "dw0": "depthwise 3x3", "dw1": "depthwise 3x3", "pw0": "pointwise", "pw1": "pointwise"}
    assert all(row["int8_us"] and row["fp32_us"] and row["est_int8_us"] > 0 for row in layers.values())
    assert layers["stem"]["pixels"] == 2 * 24 * 32  # the batch counts
    assert "| depthwise 3x3 | 2 |" in summary(result)
