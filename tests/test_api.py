from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxquant
from models.tiny import image_samples, tiny_cnn, tiny_if_model, tiny_mlp
from onnxquant.api import RECIPE_KEY
from onnxquant.errors import CalibrationDataError, ModelError
from onnxquant.recipe import (
    CalibrationSettings,
    QuantizationSettings,
    Recipe,
)
from tests.conftest import optimized_op_types, run

HELD_OUT = image_samples(8, seed=99)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30))


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_quantized_cnn_tracks_fp32(cnn_path: Path, npz_dir: Path, tmp_path: Path, method: str):
    recipe = Recipe(calibration=CalibrationSettings(method=method))
    result = onnxquant.quantize(cnn_path, npz_dir, recipe, tmp_path / "q.onnx")
    assert result.samples == 12
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")))
    for feed in HELD_OUT:
        ref, got = run(cnn_path, feed)[0], run(tmp_path / "q.onnx", feed)[0]
        assert _sqnr(ref, got) > 20, method


def test_runtime_fuses_integer_kernels(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = onnxquant.quantize(cnn_path, npz_dir)
    ops = optimized_op_types(result.model, tmp_path)
    assert ops.count("QLinearConv") == 3
    assert "QLinearAdd" in ops and "QLinearGlobalAveragePool" in ops
    assert "Conv" not in ops and "Relu" not in ops and "Clip" not in ops


def test_output_is_byte_identical_and_input_untouched(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    before = cnn_path.read_bytes()
    onnxquant.quantize(cnn_path, npz_dir, output=tmp_path / "a.onnx")
    onnxquant.quantize(cnn_path, npz_dir, output=tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert cnn_path.read_bytes() == before


def test_recipe_is_recorded_in_metadata(cnn_path: Path, npz_dir: Path):
    recipe = Recipe(calibration=CalibrationSettings(method="mse"))
    result = onnxquant.quantize(cnn_path, npz_dir, recipe)
    props = {p.key: p.value for p in result.model.metadata_props}
    assert '"method":"mse"' in props[RECIPE_KEY]


def test_constant_node_weights_and_old_opset(tmp_path: Path, npz_dir: Path):
    model = tiny_cnn(opset=11, constant_weights=True)
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    result = onnxquant.quantize(path, npz_dir)
    assert any("opset upgraded from 11 to 13" in n for n in result.notes)
    # per-channel weights need the DequantizeLinear axis of opset 13
    dq_axes = [a.i for n in result.model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert dq_axes and {o.version for o in result.model.opset_import if o.domain == ""} == {13}
    ref, got = run(path, HELD_OUT[0])[0], run(result.model, HELD_OUT[0])[0]
    assert _sqnr(ref, got) > 20


def test_dynamic_batch_and_sequence():
    samples = [{"x": np.random.default_rng(i).normal(size=(1 + i % 2, 3 + i, 8)).astype(np.float32)} for i in range(6)]
    result = onnxquant.quantize(tiny_mlp(), samples)
    feed = {"x": np.random.default_rng(9).normal(size=(3, 11, 8)).astype(np.float32)}
    ref, got = run(tiny_mlp(), feed)[0], run(result.model, feed)[0]
    assert got.shape == (3, 11, 4) and _sqnr(ref, got) > 20


def test_nested_subgraphs_do_not_crash():
    samples = [{"x": np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32), "flag": np.array(i % 2 == 0)}
               for i in range(4)]
    result = onnxquant.quantize(tiny_if_model(), samples)
    for flag in (True, False):
        feed = {**samples[0], "flag": np.array(flag)}
        ref, got = run(tiny_if_model(), feed)[0], run(result.model, feed)[0]
        assert _sqnr(ref, got) > 20


def test_saved_stats_requantize_without_inference(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    stats = tmp_path / "stats.npz"
    first = onnxquant.quantize(cnn_path, npz_dir, save_stats_to=stats)
    again = onnxquant.quantize(cnn_path, npz_dir, stats=stats)
    assert again.model.SerializeToString() == first.model.SerializeToString()
    # Without data, passes that re-read samples are skipped, and the summary says so.
    stats_only = onnxquant.quantize(cnn_path, None, stats=stats)
    assert any("bias correction skipped" in n for n in stats_only.notes)
    mse = onnxquant.quantize(cnn_path, None, Recipe(calibration=CalibrationSettings(method="mse")), stats=stats)
    assert mse.samples == 12


def test_minmax_stats_cannot_serve_histogram_methods(cnn_path: Path, npz_dir: Path):
    table = onnxquant.calibrate(cnn_path, npz_dir)
    with pytest.raises(CalibrationDataError, match="needs histograms"):
        onnxquant.quantize(cnn_path, None, Recipe(calibration=CalibrationSettings(method="entropy")), stats=table)


def test_int8_symmetric_and_16_bit_activations(cnn_path: Path, npz_dir: Path):
    for q in (QuantizationSettings(activation_type="int8", activation_symmetric=True),
              QuantizationSettings(activation_type="uint16")):
        result = onnxquant.quantize(cnn_path, npz_dir, Recipe(quantization=q))
        ref, got = run(cnn_path, HELD_OUT[0])[0], run(result.model, HELD_OUT[0])[0]
        assert _sqnr(ref, got) > (20 if q.activation_type == "int8" else 25)


def test_constant_inputs_give_nonzero_scales(cnn_path: Path):
    zeros = [{"x": np.zeros((1, 3, 16, 16), np.float32)}] * 3
    result = onnxquant.quantize(cnn_path, zeros)
    read_as_scale = {n.input[1] for n in result.model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    scales = [onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer if i.name in read_as_scale]
    assert scales and all(np.all(s > 0) for s in scales)


def test_bad_inputs_raise_typed_errors(cnn_path: Path, tmp_path: Path):
    with pytest.raises(CalibrationDataError, match="missing input"):
        onnxquant.quantize(cnn_path, [{"y": np.zeros(1)}])
    with pytest.raises(CalibrationDataError, match="NaN"):
        onnxquant.quantize(cnn_path, [{"x": np.full((1, 3, 16, 16), np.nan, np.float32)}])
    with pytest.raises(CalibrationDataError, match="no calibration data"):
        onnxquant.quantize(cnn_path, None)
    with pytest.raises(CalibrationDataError, match="no calibration samples"):
        onnxquant.quantize(cnn_path, [])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelError):
        onnxquant.quantize(bad, [{"x": np.zeros((1, 3, 16, 16), np.float32)}])
    assert not (tmp_path / "out.onnx").exists()


def test_excluded_conv_really_runs_in_float(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    """onnxruntime must not re-quantize a conv the user kept float (its WeightBiasQuantization
    would, with per-tensor weights, when the conv sits between DQ and Q)."""
    # Bias correction off on both sides: this compares rounding error alone.
    plain = Recipe().with_overrides(recovery={"bias_correction": False})
    recipe = plain.with_overrides(nodes={"exclude": ("dwconv",)})
    result = onnxquant.quantize(cnn_path, npz_dir, recipe)
    ops = optimized_op_types(result.model, tmp_path)
    # pwconv is an integer kernel; dwconv runs in float, and so does conv1, whose output the
    # float dwconv now reads exactly (the price of keeping a node really float). The fusion
    # self-check sees that conv1 would be a float island and keeps it float, reported.
    assert ops.count("QLinearConv") == 1
    assert sum(op in ("Conv", "FusedConv") for op in ops) == 2
    assert {n.name: n.reason for n in result.float_nodes}["conv1"] == "onnxruntime would not fuse it (float island)"
    assert result.fusion.integer_layers == result.fusion.quantized_layers == 2
    full = onnxquant.quantize(cnn_path, npz_dir, plain)
    # layers fewer in int8 must not be less accurate than all of them, beyond rounding noise
    # (on average: the int8 region has another shape, the residual Add now reads a float conv1)
    fewer = [_sqnr(run(cnn_path, feed)[0], run(result.model, feed)[0]) for feed in HELD_OUT]
    every = [_sqnr(run(cnn_path, feed)[0], run(full.model, feed)[0]) for feed in HELD_OUT]
    assert np.mean(fewer) >= np.mean(every) - 0.5, (fewer, every)
