import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.recipe import Recipe
from onnxquant.recovery.equalize import equalize
from tests.conftest import run


def _pair(activation: str) -> onnx.ModelProto:
    """Conv (4 channels, ranges 100x apart) -> activation -> Conv, then a pooled output."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (4, 3, 3, 3)) * np.array([10.0, 0.1, 1.0, 0.1]).reshape(4, 1, 1, 1)
    w2 = rng.normal(0, 1, (6, 4, 1, 1)) * np.array([0.1, 10.0, 1.0, 10.0]).reshape(1, 4, 1, 1)
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2"), numpy_helper.from_array(np.zeros(6, np.float32), "b2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    act = (helper.make_node("Relu", ["c1"], ["a"], name="act") if activation == "relu"
           else helper.make_node("Clip", ["c1", "lo", "hi"], ["a"], name="act"))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), act,
             helper.make_node("Conv", ["a", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _ranges(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return np.abs(w["w1"]).reshape(4, -1).max(1), np.abs(w["w2"]).swapaxes(0, 1).reshape(4, -1).max(1)


def test_equalisation_keeps_the_function_and_evens_the_ranges():
    model = _pair("relu")
    before = _ranges(model)[0]
    eq = onnx.ModelProto()
    eq.CopyFrom(model)
    report = equalize(eq)
    assert report.pairs == 1
    r1, r2 = _ranges(eq)
    assert before.max() / before.min() > 50
    assert r1.max() / r1.min() < before.max() / before.min() / 5
    np.testing.assert_allclose(r1, r2, rtol=1e-4)  # both sides meet in the middle
    for s in _samples(3, 1):
        np.testing.assert_allclose(run(eq, s)[0], run(model, s)[0], rtol=1e-4, atol=1e-5)


def test_relu6_pairs_are_left_alone_and_counted():
    model = _pair("relu6")
    report = equalize(model)
    assert (report.pairs, report.bounded) == (0, 1)


def test_equalisation_helps_per_tensor_weights():
    model = _pair("relu")
    calib, held = _samples(16, 1), _samples(8, 2)
    per_tensor = Recipe().with_overrides(quantization={"per_channel": False})
    on = onnxquant.quantize(model, calib, per_tensor)  # default: on with per-tensor weights
    off = onnxquant.quantize(model, calib, per_tensor.with_overrides(recovery={"equalize": False}))
    assert any("cross-layer equalisation: 1 Conv pairs" in n for n in on.notes)

    def sqnr(q):
        ref = np.concatenate([run(model, s)[0].ravel() for s in held])
        got = np.concatenate([run(q, s)[0].ravel() for s in held])
        return 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))

    assert sqnr(on.model) > sqnr(off.model) + 6
