"""Where int8 kernels would be slower than fp32 (depthwise, few channels, x86 without VNNI),
quantize delivers int8-stored weights that onnxruntime folds back to float initializers; the CPU
kind is pinned in each test, so they hold on any host."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.cli import main
from onnxquant.errors import UsageError
from onnxquant.inspect_model import inspect_model
from onnxquant.recipe import recipe_for_target
from onnxquant.results import FLOAT_COMPUTE_KEY
from onnxquant.search.split import is_held_out
from tests.test_conv_cost import _cnn, _samples

SHAPE = (24, 96)


def _quantize(model: onnx.ModelProto, target: str, output: Path | None = None, **quantization) -> onnxquant.QuantizeResult:
    recipe = recipe_for_target(target).with_overrides(search={"enabled": False}, quantization=quantization)
    return onnxquant.quantize(model, _samples(*SHAPE), recipe, output=output)


def _optimized(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """The graph onnxruntime runs (basic and extended optimisations; no hardware-specific layout)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _with_int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Conv weight rounded to symmetric int8, one scale per output channel."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    for init in out.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            scale = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, 1, 1, 1) / 127
            init.CopyFrom(numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32), init.name))
    return out


def test_a_depthwise_cnn_gets_float_compute_on_x86_without_vnni(tmp_path: Path):
    model = _cnn(8, 3, *SHAPE)
    result = _quantize(model, "cpu-avx2", tmp_path / "q.onnx")
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 0 and ops["Conv"] == 7
    assert result.float_compute is not None and result.float_compute["layers"] == 7
    assert result.float_compute["cpu_kind"] == "avx2" and result.float_compute["estimated_int8_over_fp32"] > 1.0
    weights = {n.input[1] for n in result.model.graph.node if n.op_type == "Conv"}
    stored = [i for i in result.model.graph.initializer if i.data_type == TensorProto.INT8]
    assert len(stored) == 7 and not any(i.name in weights for i in result.model.graph.initializer)  # Cast * scale
    note = [n for n in result.notes if n.startswith("float compute: 7 layers keep int8 weights")]
    assert len(note) == 1 and "x86-64 without VNNI" in note[0]
    assert not any("by construction" in w for w in result.warnings)
    saved = onnx.load(str(tmp_path / "q.onnx"))
    stamp = json.loads({p.key: p.value for p in saved.metadata_props}[FLOAT_COMPUTE_KEY])
    assert stamp["layers"] == 7 and stamp["cpu_kind"] == "avx2"
    info = inspect_model(tmp_path / "q.onnx")
    assert info.to_dict()["float_compute"] == stamp  # inspect tells it too
    # and counts the 7 Convs as int8 layers (Cast * scale of their int8 weights), not as no layer at all
    assert info.precision_counts() == {"int8": {"layers": 7, "parameters": sum(
        int(np.prod(i.dims)) for i in stored)}}

    # onnxruntime folds each Cast * scale into a float initializer: the graph it runs is fp32's
    ran = _optimized(saved, tmp_path / "opt.onnx")
    float_ran = _optimized(model, tmp_path / "fp32_opt.onnx")
    assert Counter(n.op_type for n in ran.graph.node) == Counter(n.op_type for n in float_ran.graph.node)
    assert {i.data_type for i in ran.graph.initializer} == {TensorProto.FLOAT}

    # and computes on the int8 weights exactly
    feed = _samples(*SHAPE, count=1)[0]
    got, reference = _run(saved, feed), _run(_with_int8_weights(model), feed)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(got, _run(model, feed))


def test_integer_kernels_kept_where_forced_with_a_warning():
    result = _quantize(_cnn(8, 3, *SHAPE), "cpu-avx2", integer_compute=True)
    assert result.float_compute is None
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)
    slower = [w for w in result.warnings if "slower than fp32 here by construction" in w]
    assert len(slower) == 1 and "integer_compute = true" in slower[0]


def test_no_float_compute_without_figures_for_the_cpu_kind():
    result = _quantize(_cnn(8, 3, *SHAPE), "cpu-arm64")
    assert result.float_compute is None and any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_float_compute_on_request_anywhere_on_the_cpu_target():
    result = _quantize(_cnn(128, 1, *SHAPE), "cpu-vnni", integer_compute=False)
    assert result.float_compute is not None and result.float_compute["estimated_int8_over_fp32"] is None
    assert "integer_compute = false" in result.float_compute["reason"]
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)
    with pytest.raises(UsageError, match="target cpu"):
        recipe_for_target("qnn").with_overrides(quantization={"integer_compute": False})


def test_convs_that_hold_little_of_the_weights_do_not_decide():
    """A slow depthwise stem in front of a large MatMul: the estimate speaks for the convolutions
    only, and the MatMul's integer kernel is worth keeping."""
    model = _cnn(8, 1, *SHAPE)
    rng = np.random.default_rng(2)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, 8], np.int64), "flat"),
                              numpy_helper.from_array(rng.normal(0, 0.3, (8, 4096)).astype(np.float32), "head_w")])
    graph.node.extend([helper.make_node("Reshape", ["y", "flat"], ["y2"], name="flatten"),
                       helper.make_node("MatMul", ["y2", "head_w"], ["z"], name="head")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4096]))
    result = _quantize(model, "cpu-avx2")
    assert result.float_compute is None
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_the_cli_flag_keeps_integer_kernels(tmp_path: Path):
    from click.testing import CliRunner

    model, calib = tmp_path / "m.onnx", tmp_path / "calib"
    onnx.save(_cnn(8, 3, *SHAPE), str(model))
    calib.mkdir()
    for i, sample in enumerate(_samples(*SHAPE)):
        np.savez(calib / f"{i}.npz", **sample)
    base = ["quantize", str(model), "--calib-data", str(calib), "--target", "cpu-avx2", "--no-search"]
    fallback = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "f.onnx")])
    assert fallback.exit_code == 0, fallback.output
    assert "note: float compute: 7 layers keep int8 weights" in fallback.output
    forced = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "i.onnx"), "--integer-compute"])
    assert forced.exit_code == 0, forced.output
    assert "float compute" not in forced.output and "by construction" in forced.output


def test_the_stage_plans_with_the_states_recipe_not_the_float_models():
    """The search's float-compute trial builds on a float model loaded with the user's recipe,
    while the trial's recipe may keep layers float (an earlier trial taken): those layers are left
    float, as the recipe stamped into the model says."""
    from dataclasses import replace

    from onnxquant.api import _pruned, _smoothed
    from onnxquant.pipeline.calibrate import calibrate
    from onnxquant.pipeline.float_compute import float_compute
    from onnxquant.pipeline.run_data import RunData

    model = _cnn(8, 3, *SHAPE)
    given = recipe_for_target("cpu-avx2")
    run = RunData(calib_data=_samples(*SHAPE))
    calibrated = calibrate(_smoothed(model, given, run), run)
    first = next(n.name for n in calibrated.model.graph.node if n.op_type == "Conv")
    trial = given.with_overrides(quantization={"integer_compute": False}, nodes={"exclude": [first]})
    built = float_compute(replace(calibrated, recipe=trial), lambda: _pruned(model, given, run, integer_kernels=False))
    assert built.float_compute is not None
    assert first in built.selection.float_nodes and first not in built.selection.quantized
    assert len(built.selection.quantized) > 0


def test_with_vnni_a_thin_cnn_computes_in_float_too():
    """The VNNI figures (mobile classifiers measured 1.37-1.75x fp32 as int8) decide as x86
    without VNNI's do, and the reason names the kind."""
    result = _quantize(_cnn(8, 3, *SHAPE), "cpu-vnni")
    assert result.float_compute is not None and "with VNNI" in result.float_compute["reason"]
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)


def test_decided_before_the_search_the_held_out_samples_still_score_it(tmp_path: Path):
    """With the search on, float compute decided up front runs no trial; the report still says
    the chosen model's drop and SQNR on the held-out calibration samples, in --json and the summary."""
    model, samples = _cnn(8, 3, *SHAPE), _samples(*SHAPE, count=16)
    result = onnxquant.quantize(model, samples, recipe_for_target("cpu-avx2"), output=tmp_path / "q.onnx")
    assert result.float_compute is not None
    report = result.to_dict()["search"]
    assert report["trials"] == [] and report["chosen"] == "float compute on int8 weights"
    assert report["scored_samples"] == 8 and "decided before it" in report["unsearched"]
    # the same drop and SQNR, scored here against fp32 on the held-out half (one of every 2 samples)
    held = [s for i, s in enumerate(samples) if is_held_out(i, 2, len(samples))]
    got = np.concatenate([_run(result.model, s).ravel() for s in held])
    want = np.concatenate([_run(model, s).ravel() for s in held])
    sqnr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - got).astype(np.float64) ** 2))
    assert report["sqnr_db"] == pytest.approx(sqnr, abs=0.5) and 0 <= report["drop"] < 0.01
    line = [n for n in result.notes if n.startswith("recipe search: no trial ran")]
    assert len(line) == 1 and f"drop {report['drop']:.4f}" in line[0] and "SQNR" in line[0]
    assert "int8 kernels are estimated slower here" in line[0]

    asked = recipe_for_target("cpu-vnni").with_overrides(quantization={"integer_compute": False})
    report = onnxquant.quantize(_cnn(128, 1, *SHAPE), samples, asked).to_dict()["search"]
    assert report["unsearched"].endswith("the recipe asks") and report["sqnr_db"] > 20
