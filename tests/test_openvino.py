"""OpenVINO's execution provider. Its onnxruntime build replaces the plain one, so these run in
a second virtual environment that .ci/run creates (ONNXQUANT_EXPECT_OPENVINO=1 there: a missing
provider then fails instead of skipping)."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

from onnxquant.api import quantize
from onnxquant.model_io import iter_graphs
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


@pytest.mark.parametrize("name", ["lstm", "if_network"])
def test_recurrent_and_control_flow_models_for_openvino_run_on_openvino(name: str, tmp_path: Path):
    """Int8 recurrent weights (DequantizeLinear before LSTM) and weights inside If branches load
    and run on OpenVINO, as close to fp32 as OpenVINO runs the original itself."""
    import numpy as np
    import onnx

    from models.tiny_control_flow import if_samples, recurrent_samples, tiny_if_network, tiny_recurrent

    assert AVAILABLE, "onnxruntime-openvino was expected here"
    model, samples = ((tiny_recurrent("LSTM"), recurrent_samples(16)) if name == "lstm"
                      else (tiny_if_network(), if_samples(16)))
    src, folder = tmp_path / f"{name}.onnx", tmp_path / "samples"
    onnx.save(model, src)
    folder.mkdir()
    for i, sample in enumerate(samples):
        np.savez(folder / f"s{i:02d}.npz", **sample)
    out = tmp_path / f"{name}.openvino.onnx"
    result = quantize(src, folder, recipe_for_target("openvino"), out)
    assert not result.float_nodes  # every weight is int8 on disk, the recurrent and branch ones too
    graphs = list(iter_graphs(onnx.load(str(out)).graph))  # If branches included
    # (a weight the main graph stores is dequantized there, once, and read by the branches)
    made_by = {o: n.op_type for graph in graphs for n in graph.node for o in n.output}
    for graph in graphs:
        for node in graph.node:
            if node.op_type in ("LSTM", "Conv"):
                weights = node.input[1:3] if node.op_type == "LSTM" else node.input[1:2]
                # a bidirectional LSTM's int8 rows are reshaped back after their DequantizeLinear
                assert {made_by.get(w) for w in weights} <= {"DequantizeLinear", "Reshape"}, node.name
    report = validate(src, out, folder, ("openvino",), Budget(min_cosine=0.98), latency_runs=1)
    openvino = report.to_dict()["providers"][0]
    assert openvino["compressed"]["placement"]["nodes_on_ep"] > 0
    if openvino["original"]["cosine_to_cpu"]["min"] >= 0.99:
        assert report.passed, report.failures
    else:  # OpenVINO 2025's If runs the fp32 original wrongly too: the report must say it is not the int8
        assert any("the original fp32 model already disagrees" in n for n in openvino["notes"])
