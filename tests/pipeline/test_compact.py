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


def test_qualified_names_of_body_layers_still_lead_to_them(tmp_path: Path):
    """An unnamed If gets a name when prepared; the report names the layers of its branches by
    that name (``If_0/then_branch/...``), so the written model keeps it."""
    from models.tiny_control_flow import if_samples, tiny_if_network

    model = tiny_if_network()
    model.graph.node[0].name = ""
    recipe = recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(model, if_samples(4), recipe, output=tmp_path / "q.onnx")
    saved = onnx.load(str(tmp_path / "q.onnx"))
    assert result.weight_only  # the branches' layers, by qualified name
    if_name = saved.graph.node[-1].name if saved.graph.node[-1].op_type == "If" else None
    assert if_name and {key.split("/")[0] for key in result.weight_only} == {if_name}
