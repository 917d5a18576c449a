"""quantize writes the compacted model: no recorded shapes, short names only for what onnxquant
inserted, every name the input or the run's report has still found in the file, and the same
file on every run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxquant
import onnxquant.api
from models.tiny import image_samples, tiny_cnn
from onnxquant.passes.compact import model_names
from onnxquant.recipe import recipe_for_target


def _recipe():
    return recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False}, nodes={"exclude": ["dwconv"]})


def test_quantize_writes_the_compacted_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model, samples = tiny_cnn(), image_samples(4)
    result = onnxquant.quantize(model, samples, _recipe(), output=tmp_path / "a.onnx")
    saved = onnx.load(str(tmp_path / "a.onnx"))
    assert not saved.graph.value_info
    names = model_names(saved)
    assert {n.name for n in model.graph.node} <= names  # the input's layers keep their names
    assert "dwconv" in {n.name for n in result.float_nodes} and "dwconv" in names  # as the report says
    made = {n.name for n in saved.graph.node} - {n.name for n in model.graph.node}
    assert made and all(len(name) <= 4 for name in made)  # the inserted Q/DQ nodes
    onnxquant.quantize(model, samples, _recipe(), output=tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    # the same numbers as the model written without the compact stage, in fewer bytes
    monkeypatch.setattr(onnxquant.api, "compact", lambda state: state)
    onnxquant.quantize(model, samples, _recipe(), output=tmp_path / "long.onnx")
    assert (tmp_path / "a.onnx").stat().st_size < (tmp_path / "long.onnx").stat().st_size
    assert result.size_after == (tmp_path / "a.onnx").stat().st_size
    runs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]) for f in ("a.onnx", "long.onnx")]
    for sample in image_samples(3, seed=5):
        assert np.array_equal(runs[0].run(None, sample)[0], runs[1].run(None, sample)[0])
