import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.pipeline.selection import select_nodes as _select
from onnxquant.errors import UsageError
from onnxquant.planner import node_names
from onnxquant.recipe import Recipe
from onnxquant.recovery.smoothquant import smooth
from tests.conftest import run

OUTLIER = 3  # the input channel a hundred times larger than the others


def _outlier_matmul(layer_norm: bool, infer: bool = True) -> onnx.ModelProto:
    """(1, 6, 8) tokens -> [LayerNorm] -> MatMul (8 -> 4), with one outlier input channel."""
    rng = np.random.default_rng(0)
    gamma = np.ones(8, np.float32)
    gamma[OUTLIER] = 100.0
    nodes, inits = [], [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "w")]
    x = "x"
    if layer_norm:
        inits += [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(8, np.float32), "beta")]
        nodes.append(helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1))
        x = "h"
    nodes += [helper.make_node("MatMul", [x, "w"], ["m"], name="mm"), helper.make_node("Relu", ["m"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model) if infer else model


def _samples(n: int, seed: int, outlier: bool = False) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(0, 1, (1, 6, 8)).astype(np.float32)
        if outlier:
            x[..., OUTLIER] *= 100
        out.append({"x": x})
    return out


def _sqnr(model, quantized, samples) -> float:
    ref = np.concatenate([run(model, s)[0] for s in samples])
    got = np.concatenate([run(quantized, s)[0] for s in samples])
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_smoothing_keeps_the_float_function_and_folds_into_layer_norm():
    model = _outlier_matmul(layer_norm=True)
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    node_names(smoothed)
    report = smooth(smoothed, _select(smoothed, Recipe()), _samples(8, 1), alpha=0.75)
    assert (report.folded, report.inserted) == (1, 0)
    gamma = numpy_helper.to_array(next(i for i in smoothed.graph.initializer if i.name == "gamma"))
    assert gamma[OUTLIER] < 50  # the outlier moved into the weight
    for s in _samples(4, 2):
        np.testing.assert_allclose(run(smoothed, s)[0], run(model, s)[0], rtol=1e-4, atol=1e-4)


def test_smoothing_inserts_a_mul_when_it_cannot_fold_and_improves_int8():
    model = _outlier_matmul(layer_norm=False)
    calib, held = _samples(16, 1, outlier=True), _samples(8, 2, outlier=True)
    on = onnxquant.quantize(model, calib, Recipe().with_overrides(quantization={"integer_compute": True}))
    off = onnxquant.quantize(model, calib, Recipe().with_overrides(quantization={"integer_compute": True}, recovery={"smoothquant": False}))
    assert any("1 Mul nodes inserted" in n for n in on.notes)
    assert _sqnr(model, on.model, held) > _sqnr(model, off.model, held) + 3
    only_fold = onnxquant.quantize(model, calib, Recipe().with_overrides(quantization={"integer_compute": True}, recovery={"smoothquant_fold_only": True}))
    assert not any("SmoothQuant" in n for n in only_fold.notes)


def test_smoothing_leaves_rank_two_features_alone(cnn_path, npz_dir):
    result = onnxquant.quantize(cnn_path, npz_dir)
    assert not any("SmoothQuant" in n for n in result.notes)


def test_saved_statistics_without_data_cannot_be_smoothed_again():
    """Saved ranges were collected on the smoothed graph; without the data the smoothing cannot
    be redone, and ranges of one graph must never be used on another."""
    model = _outlier_matmul(layer_norm=True)
    calib = _samples(8, 1, outlier=True)
    stats = onnxquant.calibrate(model, calib)
    with pytest.raises(UsageError, match="--no-smoothquant"):
        onnxquant.quantize(model, None, stats=stats)
    again = onnxquant.quantize(model, calib, stats=stats)  # with the data: the same smoothing, the same model
    assert again.model.SerializeToString() == onnxquant.quantize(model, calib).model.SerializeToString()
    off = Recipe().with_overrides(recovery={"smoothquant": False})
    onnxquant.quantize(model, None, off, stats=onnxquant.calibrate(model, calib, off))


def test_one_pass_reader_skips_smoothing_with_a_note():
    model = _outlier_matmul(layer_norm=False)

    class Reader:
        def __init__(self) -> None:
            self.items = iter(_samples(8, 1, outlier=True))

        def get_next(self):
            return next(self.items, None)

    result = onnxquant.quantize(model, Reader())
    assert any(n.startswith("SmoothQuant skipped: it reads the calibration data again") for n in result.notes)


def test_unknown_ranks_are_checked_on_the_first_sample():
    """Shape inference stops at contrib ops (com.microsoft Gelu): the rank of a MatMul input is
    then unknown, and the probe itself tells token activations from rank-2 features."""
    model = _outlier_matmul(layer_norm=True, infer=False)
    assert not model.graph.value_info
    node_names(model)
    assert smooth(model, _select(model, Recipe()), _samples(4, 1), alpha=0.75).folded == 1
    flat = _outlier_matmul(layer_norm=True, infer=False)
    flat.graph.input[0].type.tensor_type.shape.dim.pop(0)  # (6, 8): rank 2
    flat.graph.output[0].type.tensor_type.shape.dim.pop(0)
    node_names(flat)
    two_d = [{"x": s["x"][0]} for s in _samples(4, 1)]
    report = smooth(flat, _select(flat, Recipe()), two_d, alpha=0.75)
    assert (report.folded, report.inserted) == (0, 0)


def test_every_op_targets_only_fold():
    """On QNN every op is quantized, the inserted Mul too, so smoothing only folds."""
    from onnxquant.recipe import recipe_for_target

    model = _outlier_matmul(layer_norm=False)
    result = onnxquant.quantize(model, _samples(8, 1, outlier=True), recipe_for_target("qnn"))
    assert not any("SmoothQuant (" in n for n in result.notes)
