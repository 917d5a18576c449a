import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.recipe import Recipe
from onnxquant.recovery.adaround import _optimize
from onnxquant.recovery.gram import LinearLayer, patches, rows
from tests.conftest import run


def _correlated(k: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, k)) @ rng.normal(size=(k, n))


@pytest.mark.parametrize("bits", [4, 8])
def test_learned_rounding_reconstructs_better_than_nearest(bits: int):
    rng = np.random.default_rng(0)
    x = _correlated(48, 3000, 1)
    w = rng.normal(0, 0.1, (1, 24, 48))
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=2, keepdims=True) / qmax
    q, before, after = _optimize(w, scale, (x @ x.T / x.shape[1])[None], -qmax, qmax, 300)

    def error(ints: np.ndarray) -> float:
        return float(np.mean(((ints * scale - w)[0] @ x) ** 2))

    nearest = np.clip(np.rint(w / scale), -qmax, qmax)
    assert np.array_equal(q, np.round(q)) and np.abs(q).max() <= qmax  # integers in range
    assert np.all(np.abs(q - w / scale) < 1)  # each weight rounded down or up, never further
    assert 10 * np.log10(error(nearest) / error(q)) > 1.5  # dB
    assert after < before


def test_huge_inputs_stay_finite_thanks_to_clipping():
    x = _correlated(16, 500, 2) * 1e6
    w = np.random.default_rng(3).normal(0, 1, (1, 8, 16))
    scale = np.abs(w).max(axis=2, keepdims=True) / 127
    q, _, after = _optimize(w, scale, (x @ x.T / 500)[None], -127, 127, 100)
    assert np.all(np.isfinite(q)) and np.isfinite(after)


@pytest.mark.parametrize("group,stride,pad,dilation", [(1, 1, 1, 1), (4, 2, 1, 1), (2, 1, 0, 2)])
def test_patches_times_weights_is_the_convolution(group: int, stride: int, pad: int, dilation: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    w = rng.normal(size=(8, 4 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4,
                            dilations=[dilation] * 2)
    model = helper.make_model(helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                                [numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    expected = run(model, {"x": x})[0]
    layer = LinearLayer(node, "w", groups=group, conv=True)
    p = patches(x.astype(np.float64), layer, (3, 3))  # (groups, positions, K)
    weight_rows = rows(w.astype(np.float64), layer)  # (groups, out per group, K)
    out = np.matmul(p, weight_rows.transpose(0, 2, 1))  # (groups, positions, out per group)
    n, c_out, ho, wo = expected.shape
    got = out.reshape(group, n, ho, wo, c_out // group).transpose(1, 0, 4, 2, 3).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_adaround_in_the_pipeline_is_deterministic_and_writes_learned_integers(cnn_path, npz_dir):
    recipe = Recipe().with_overrides(recovery={"adaround": True, "adaround_iterations": 60})
    first = onnxquant.quantize(cnn_path, npz_dir, recipe)
    again = onnxquant.quantize(cnn_path, npz_dir, recipe)
    assert first.model.SerializeToString() == again.model.SerializeToString()
    assert any(n.startswith("learned rounding: ") and "layers improved" in n for n in first.notes)
    # the same 7-bit weights, nearest rounding (learned rounding leaves pair-limited weights alone)
    plain = onnxquant.quantize(cnn_path, npz_dir, Recipe().with_overrides(quantization={"pair_limited_weights": False}))
    ints = {i.name: numpy_helper.to_array(i) for i in first.model.graph.initializer if i.data_type == TensorProto.INT8}
    nearest = {i.name: numpy_helper.to_array(i) for i in plain.model.graph.initializer if i.data_type == TensorProto.INT8}
    changed = [k for k in ints if k in nearest and not np.array_equal(ints[k], nearest[k])]
    assert changed  # some weights rounded the other way
    assert all(np.abs(ints[k].astype(int) - nearest[k].astype(int)).max() <= 1 for k in changed)
    onnx.checker.check_model(first.model)
