"""The stages, walked one by one as the facade does; a calibrated state re-entered at ``plan``."""
from __future__ import annotations

import ast
from pathlib import Path

import onnx
import pytest

import onnxquant
from onnxquant.pipeline.build import build
from onnxquant.pipeline.calibrate import calibrate
from onnxquant.pipeline.check import check
from onnxquant.pipeline.compact import compact
from onnxquant.pipeline.islands import without_islands
from onnxquant.pipeline.load import load
from onnxquant.pipeline.prepare import prepare
from onnxquant.pipeline.prune import prune
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.save import save
from onnxquant.pipeline.smooth import smooth
from onnxquant.recipe import recipe_for_target

STAGES = ["load", "prepare", "prune", "smooth", "calibrate", "plan", "recover", "rewrite", "float_compute", "check", "compact", "save"]
PIPELINE = Path(onnxquant.__file__).parent / "pipeline"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_module_has_one_public_entry_point_named_after_it(stage: str):
    tree = ast.parse((PIPELINE / f"{stage}.py").read_text(encoding="utf-8"))
    public = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    assert public == [stage]


def _calibrated(model: Path, run: RunData):
    state = smooth(prune(prepare(load(model, recipe_for_target("cpu"), run)), run), run)  # quantize's default
    return calibrate(state, run)


def test_the_stages_in_a_row_write_what_quantize_writes(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    onnxquant.quantize(cnn_path, npz_dir, output=tmp_path / "a.onnx")
    run = RunData(calib_data=npz_dir)
    saved = save(compact(check(without_islands(_calibrated(cnn_path, run), run))), tmp_path / "b.onnx")
    assert saved.saved.path == tmp_path / "b.onnx"
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_calibrated_state_is_re_entered_at_plan_without_changing(cnn_path: Path, npz_dir: Path):
    run = RunData(calib_data=npz_dir)
    calibrated = _calibrated(cnn_path, run)
    before = calibrated.model.SerializeToString(deterministic=True)
    first, again = build(calibrated, run), build(calibrated, run)
    assert calibrated.model.SerializeToString(deterministic=True) == before
    assert first.model.SerializeToString(deterministic=True) == again.model.SerializeToString(deterministic=True)
    assert any(n.op_type == "QuantizeLinear" for n in first.model.graph.node)

    conv = next(n.name for n in calibrated.model.graph.node if n.op_type == "Conv")
    narrower = build(calibrated, run, excluded=[conv])
    assert conv in first.selection.quantized and conv not in narrower.selection.quantized
    assert "exclude" in narrower.selection.float_nodes[conv][1]
    assert narrower.recipe is calibrated.recipe  # the user's recipe stays what the output is stamped with
    onnx.checker.check_model(narrower.model)
