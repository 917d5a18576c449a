"""Tiny models written the way non-PyTorch converters write them (seeded weights, built in code).

Each reproduces one quirk seen in real exports: scikit-learn's MatMul + Add with a (1, N) bias,
Paddle's Gemm with alpha/beta, TF/Keras's weight on the left of a MatMul, fp16 models.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.tiny import _init, _model


def sklearn_style_mlp(seed: int = 0, features: int = 16, hidden: int = 32, classes: int = 8) -> onnx.ModelProto:
    """skl2onnx's MLPClassifier layout: MatMul, then Add of a (1, N) bias, Relu, Softmax."""
    rng = np.random.default_rng(seed)
    inits = [_init("coefficient", rng.normal(0, 0.4, (features, hidden))),
             _init("intercepts", rng.normal(0, 0.1, (1, hidden))),
             _init("coefficient1", rng.normal(0, 0.3, (hidden, classes))),
             _init("intercepts1", rng.normal(0, 0.1, (1, classes)))]
    nodes = [
        helper.make_node("MatMul", ["x", "coefficient"], ["mul_result"], name="MatMul"),
        helper.make_node("Add", ["mul_result", "intercepts"], ["add_result"], name="Add"),
        helper.make_node("Relu", ["add_result"], ["next_activations"], name="Relu"),
        helper.make_node("MatMul", ["next_activations", "coefficient1"], ["mul_result1"], name="MatMul1"),
        helper.make_node("Add", ["mul_result1", "intercepts1"], ["add_result1"], name="Add1"),
        helper.make_node("Softmax", ["add_result1"], ["probabilities"], name="Softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "sklearn_style_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])], inits)
    return _model(graph)


def scaled_gemm_mlp(seed: int = 0, features: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """Gemm layers with alpha/beta != 1 and a scalar bias, as Paddle and old TF converters write."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.4, (hidden, features))), _init("b1", rng.normal(0, 0.1, (hidden,))),
             _init("w2", rng.normal(0, 0.3, (hidden, 4))), _init("b2", np.array(0.25))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm1", alpha=0.5, beta=2.0, transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm2", alpha=1.5),
    ]
    graph = helper.make_graph(nodes, "scaled_gemm_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return _model(graph)


def left_weight_matmul(seed: int = 0, channels: int = 8, out_channels: int = 24, steps: int = 6) -> onnx.ModelProto:
    """``W @ x`` with the weight on the left (x: batch, channels, steps), then Relu, a 1x1 Conv written by TF."""
    rng = np.random.default_rng(seed)
    inits = [_init("w", rng.normal(0, 0.4, (out_channels, channels))), _init("w2", rng.normal(0, 0.3, (4, out_channels)))]
    nodes = [
        helper.make_node("MatMul", ["w", "x"], ["h"], name="left_matmul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["w2", "r"], ["y"], name="left_matmul2"),
    ]
    graph = helper.make_graph(nodes, "left_weight_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, steps])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, steps])], inits)
    return _model(graph)


def float16_mlp(seed: int = 0, features: int = 16, hidden: int = 64) -> onnx.ModelProto:
    """An fp16 model: fp16 input, weights, activations and output (Gemm, Relu, Gemm)."""
    rng = np.random.default_rng(seed)

    def half(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value.astype(np.float16), name)

    inits = [half("w1", rng.normal(0, 0.4, (features, hidden))), half("b1", rng.normal(0, 0.1, (hidden,))),
             half("w2", rng.normal(0, 0.3, (hidden, 4))), half("b2", rng.normal(0, 0.1, (4,)))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm2"),
    ]
    graph = helper.make_graph(nodes, "float16_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])], inits)
    return _model(graph)


def feature_samples(count: int, features: int = 16, seed: int = 1, batch: int = 4,
                    dtype: type = np.float32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (batch, features)).astype(dtype)} for _ in range(count)]


def mean_pooled_cnn(seed: int = 0, opset: int = 17, keepdims: bool = False, channels: int = 16,
                    classes: int = 8) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu, then the global mean as torch.onnx's dynamo exporter writes it
    (ReduceMean over axes 2, 3; the axes an input from opset 18), then a Gemm classifier."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.3, (channels, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, channels)),
             _init("w2", rng.normal(0, 0.2, (channels, channels, 3, 3))), _init("b2", rng.normal(0, 0.1, channels)),
             _init("fc", rng.normal(0, 0.3, (classes, channels))), _init("fc_b", rng.normal(0, 0.1, classes))]
    axes: dict = {}
    mean_inputs = ["r2"]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1, -2], np.int64), "mean_axes"))
        mean_inputs.append("mean_axes")
    else:
        axes = {"axes": [2, 3]}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("ReduceMean", mean_inputs, ["pooled"], name="mean", keepdims=int(keepdims), **axes)]
    if keepdims:
        inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["pooled", "flat_shape"], ["features"], name="flatten"))
    else:
        nodes.append(helper.make_node("Identity", ["pooled"], ["features"], name="features"))
    nodes.append(helper.make_node("Gemm", ["features", "fc", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "mean_pooled_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return _model(graph, opset)


def leaky_floor_cnn(seed: int = 0, channels: int = 16, floor: float = -0.4) -> onnx.ModelProto:
    """Conv-LeakyRelu-Max, twice, then a 1x1 Conv, as tf2onnx writes Google's speech_embedding
    (openWakeWord): ``tf.math.maximum(leaky_relu(x), -0.4)``, the bound a (1, 1, 1, 1) constant."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.3, (channels, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, channels)),
             _init("w2", rng.normal(0, 0.2, (channels, channels, 3, 3))), _init("b2", rng.normal(0, 0.1, channels)),
             _init("w3", rng.normal(0, 0.2, (4, channels, 1, 1))), _init("floor", np.full((1, 1, 1, 1), floor))]
    nodes = []
    x = "x"
    for k in (1, 2):
        nodes += [helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("LeakyRelu", [f"c{k}"], [f"l{k}"], name=f"leaky{k}", alpha=0.2),
                  helper.make_node("Max", [f"l{k}", "floor"], [f"m{k}"], name=f"floor{k}")]
        x = f"m{k}"
    nodes.append(helper.make_node("Conv", [x, "w3"], ["y"], name="conv3"))
    graph = helper.make_graph(nodes, "leaky_floor_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])], inits)
    return _model(graph, 13)


def image_like_samples(count: int, seed: int = 1, batch: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (batch, 3, 12, 12)).astype(np.float32)} for _ in range(count)]
