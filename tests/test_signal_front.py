"""A filter bank computed in the graph before a Log stays float; a network ending in a Log does not."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.signal_front import WHY, front_end_nodes
from tests.conftest import INTEGER_KERNELS, run


def _spectrogram_net(seed: int = 0) -> onnx.ModelProto:
    """Raw samples -> Fourier kernels as two strided Convs -> magnitude -> Log -> a learned Conv, Relu, Conv."""
    rng = np.random.default_rng(seed)
    t = np.arange(64)
    freqs = np.arange(1, 17)[:, None]
    window = np.hanning(64)
    inits = [numpy_helper.from_array(np.array([1, 1, -1], np.int64), "shape")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (("eps", np.array(1e-6)),
        ("re", (np.cos(2 * np.pi * freqs * t / 64) * window)[:, None, :]),
        ("im", (np.sin(2 * np.pi * freqs * t / 64) * window)[:, None, :]),
        ("w1", rng.normal(0, 0.3, (8, 16, 3))), ("b1", rng.normal(0, 0.1, 8)), ("w2", rng.normal(0, 0.3, (4, 8, 1))))]
    nodes = [helper.make_node("Reshape", ["audio", "shape"], ["x"], name="frame"),
             helper.make_node("Conv", ["x", "re"], ["r"], name="real", strides=[16]),
             helper.make_node("Conv", ["x", "im"], ["i"], name="imag", strides=[16]),
             helper.make_node("Mul", ["r", "r"], ["r2"], name="r2"),
             helper.make_node("Mul", ["i", "i"], ["i2"], name="i2"),
             helper.make_node("Add", ["r2", "i2"], ["power"], name="power"),
             helper.make_node("Sqrt", ["power"], ["magnitude"], name="magnitude"),
             helper.make_node("Add", ["magnitude", "eps"], ["floored"], name="floor"),
             helper.make_node("Log", ["floored"], ["log"], name="log"),
             helper.make_node("Conv", ["log", "w1", "b1"], ["h"], name="learned1", pads=[1, 1]),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Conv", ["hr", "w2"], ["y"], name="learned2")]
    graph = helper.make_graph(nodes, "spectrogram_net", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 61])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _tones(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / 1024
    out = []
    for _ in range(count):
        audio = sum(rng.uniform(0.01, 1.0) * np.sin(2 * np.pi * rng.uniform(10, 250) * t) for _ in range(3))
        out.append({"audio": (audio + rng.normal(0, 1e-3, 1024))[None].astype(np.float32)})
    return out


def test_the_filter_bank_before_a_log_stays_float():
    model = _spectrogram_net()
    assert front_end_nodes(model) == {"real": WHY, "imag": WHY}
    result = onnxquant.quantize(model, _tones(16, 1), INTEGER_KERNELS.with_overrides(search={"enabled": False}))
    assert {f.name: f.reason for f in result.float_nodes if f.op_type == "Conv"} == {"real": WHY, "imag": WHY}
    assert result.quantized_nodes.get("Conv") == 2  # the learned layers after the Log
    assert f"2 layer(s) kept float: {WHY}" in result.notes
    for feed in _tones(4, 7):
        got, want = run(result.model, feed)[0].ravel(), run(model, feed)[0].ravel()
        assert np.sum((got - want) ** 2) < 1e-3 * np.sum(want ** 2)  # SQNR above 30 dB


def test_a_network_that_ends_in_a_log_is_left_alone():
    """log(softmax(...)): a Relu on the way, so no filter bank."""
    model = _spectrogram_net()
    nodes = [n for n in model.graph.node if n.name not in ("floor", "log", "learned1", "relu", "learned2")]
    nodes += [helper.make_node("Relu", ["magnitude"], ["act"], name="act"),
              helper.make_node("Softmax", ["act"], ["p"], name="softmax", axis=1),
              helper.make_node("Log", ["p"], ["y"], name="log")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert front_end_nodes(model) == {}


def test_a_clamp_before_the_log_is_part_of_the_front_end():
    """log(clamp(power, 1e-10)), as openWakeWord's melspectrogram.onnx writes it."""
    model = _spectrogram_net()
    floor = next(n for n in model.graph.node if n.name == "floor")
    floor.op_type = "Max"
    assert set(front_end_nodes(model)) == {"real", "imag"}


def _relu6_fcn() -> onnx.ModelProto:
    """Conv + Clip(0, 6) x4 -> Conv -> Clip(1e-3) -> Log: a learned network ending in a floored log."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("z", 0), ("six", 6), ("eps", 1e-3))]
    nodes, x, cin = [], "x", 3
    for k in range(4):
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (16, cin, 3, 3)).astype(np.float32), f"w{k}")]
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Clip", [f"c{k}", "z", "six"], [f"r{k}"], name=f"relu6_{k}")]
        x, cin = f"r{k}", 16
    inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (1, 16, 1, 1)).astype(np.float32), "wo"))
    nodes += [helper.make_node("Conv", [x, "wo"], ["o"], name="head"),
              helper.make_node("Clip", ["o", "eps"], ["oc"], name="floor"),
              helper.make_node("Log", ["oc"], ["y"], name="log")]
    graph = helper.make_graph(nodes, "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_relu6_network_ending_in_a_floored_log_is_not_a_front_end():
    """No magnitude step between the learned layers and the Log: its Relu6 clamps are activations."""
    model = _relu6_fcn()
    assert front_end_nodes(model) == {}
    result = onnxquant.quantize(model, [{"x": np.random.default_rng(s).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)}
                                        for s in range(8)], INTEGER_KERNELS.with_overrides(search={"enabled": False}))
    assert result.quantized_nodes.get("Conv", 0) >= 4


def test_a_clamp_before_the_magnitude_is_an_activation():
    """A Clip between the filter bank and its squaring is not a log floor."""
    model = _spectrogram_net()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    for node in model.graph.node:
        if node.name == "r2":
            node.input[:] = ["rc", "rc"]
    model.graph.node.insert(3, helper.make_node("Clip", ["r", "zero"], ["rc"], name="clamp"))
    assert front_end_nodes(model) == {}


def test_the_first_learned_layer_must_read_the_input_through_layout_ops():
    """A learned layer fed by another computation (here a Sqrt of the input) is not a filter bank of the raw samples."""
    model = _spectrogram_net()
    for node in model.graph.node:
        if node.name in ("real", "imag"):
            node.input[0] = "xs"
    model.graph.node.insert(1, helper.make_node("Abs", ["x"], ["xs"], name="rectify"))
    assert front_end_nodes(model) == {}
