"""Tiny recurrent and control-flow models for tests (seeded random weights, built in code)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.tiny import _init, _model

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def tiny_recurrent(op: str = "LSTM", direction: str = "bidirectional", hidden: int = 16, features: int = 8,
                   seed: int = 0) -> onnx.ModelProto:
    """Conv1d features -> ``op`` over time -> the hidden sequence. The two directions' weights
    differ in scale by 8x, so one scale per direction and row matters."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    rows = GATES[op] * hidden
    scale = np.array([0.3, 2.4][:dirs]).reshape(dirs, 1, 1)
    w = rng.normal(0, 1, (dirs, rows, features)) * scale / np.sqrt(features)
    r = rng.normal(0, 1, (dirs, rows, hidden)) * scale / np.sqrt(hidden)
    b = rng.normal(0, 0.1, (dirs, 2 * rows))
    conv_w = rng.normal(0, 0.3, (features, 1, 3))
    nodes = [
        helper.make_node("Conv", ["audio", "conv_w"], ["feat"], name="conv", pads=[1, 1]),  # (1, F, T)
        helper.make_node("Transpose", ["feat"], ["seq"], name="to_time_major", perm=[2, 0, 1]),  # (T, 1, F)
        helper.make_node(op, ["seq", "W", "R", "B"], ["y"], name="rnn", hidden_size=hidden, direction=direction),
    ]
    graph = helper.make_graph(
        nodes, f"tiny_{op.lower()}",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", dirs, 1, hidden])],
        [_init("conv_w", conv_w), _init("W", w), _init("R", r), _init("B", b)],
    )
    return _model(graph)


def recurrent_samples(count: int, steps: int = 20, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"audio": rng.normal(0, 1, (1, 1, steps)).astype(np.float32)} for _ in range(count)]


def tiny_if_network(seed: int = 0, hidden: int = 32, lstm_bias: bool = False) -> onnx.ModelProto:
    """A streaming-style model whose whole network sits in the branches of an If on a flag:
    Conv -> Relu -> Conv -> LSTM in each branch. Both branches hold their own copy of the same
    LSTM weights (as constant folding leaves them); the first Conv's weight is captured from the
    main graph; the rest are the branches' own initializers. ``lstm_bias``: each LSTM also reads
    a bias (1, 8 * hidden), which DynamicQuantizeLSTM keeps float (Silero VAD: hidden 128)."""
    rng = np.random.default_rng(seed)
    shared = _init("shared_conv_w", rng.normal(0, 0.3, (32, 1, 3)))
    lstm_w = rng.normal(0, 0.1, (1, 4 * hidden, 32))
    lstm_r = rng.normal(0, 0.1, (1, 4 * hidden, hidden))
    lstm_b = rng.normal(0, 0.1, (1, 8 * hidden))

    def branch(name: str, gain: float) -> onnx.GraphProto:
        inits = [_init(f"{name}_conv2_w", rng.normal(0, 0.1, (32, 32, 3)) * gain),
                 _init(f"{name}_lstm_w", lstm_w), _init(f"{name}_lstm_r", lstm_r)] \
            + ([_init(f"{name}_lstm_b", lstm_b)] if lstm_bias else [])
        bias = [f"{name}_lstm_b"] if lstm_bias else []
        nodes = [
            helper.make_node("Conv", ["audio", "shared_conv_w"], [f"{name}_c1"], name=f"{name}_conv1", pads=[1, 1]),
            helper.make_node("Relu", [f"{name}_c1"], [f"{name}_r1"], name=f"{name}_relu1"),
            helper.make_node("Conv", [f"{name}_r1", f"{name}_conv2_w"], [f"{name}_c2"], name=f"{name}_conv2", pads=[1, 1]),
            helper.make_node("Relu", [f"{name}_c2"], [f"{name}_r2"], name=f"{name}_relu2"),
            helper.make_node("Transpose", [f"{name}_r2"], [f"{name}_seq"], name=f"{name}_to_time", perm=[2, 0, 1]),
            helper.make_node("LSTM", [f"{name}_seq", f"{name}_lstm_w", f"{name}_lstm_r", *bias], [f"{name}_y"],
                             name=f"{name}_lstm", hidden_size=hidden),
        ]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["T", 1, 1, hidden])],
                                 inits)

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="by_rate", then_branch=branch("then", 1.0),
                          else_branch=branch("else", 0.5))],
        "tiny_if_network",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, "T"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, 1, hidden])],
        [shared],
    )
    return _model(graph)


def if_samples(count: int, flags: tuple[bool, ...] = (True, False), steps: int = 24, seed: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"audio": rng.normal(0, 1, (1, 1, steps)).astype(np.float32), "flag": np.array(flags[i % len(flags)])}
            for i in range(count)]


def tiny_loop_matmul(seed: int = 0, steps: int = 3) -> onnx.ModelProto:
    """A Loop that applies the same MatMul + Relu ``steps`` times (weights inside the body)."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("MatMul", ["h_in", "body_w"], ["mm"], name="body_matmul"),
         helper.make_node("Relu", ["mm"], ["h_out"], name="body_relu")],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 16])],
        [_init("body_w", rng.normal(0, 0.35, (16, 16)))],
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "in_w"], ["h0"], name="in_matmul"),
         helper.make_node("Loop", ["trips", "", "h0"], ["h"], name="loop", body=body)],
        "tiny_loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16])],
        [_init("in_w", rng.normal(0, 0.35, (16, 16))),
         onnx.numpy_helper.from_array(np.array(steps, np.int64), "trips")],
    )
    return _model(graph)


def tiny_scan_matmul(seed: int = 0) -> onnx.ModelProto:
    """A Scan over time steps: h = Relu(x_t @ W) + h, with the weight inside the body."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "scan_w"], ["xw"], name="scan_matmul"),
         helper.make_node("Relu", ["xw"], ["act"], name="scan_relu"),
         helper.make_node("Add", ["act", "h_prev"], ["h_next"], name="scan_add"),
         helper.make_node("Identity", ["h_next"], ["y_t"], name="scan_out")],
        "scan_body",
        [helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, 16])],
        [_init("scan_w", rng.normal(0, 0.3, (16, 16)))],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["h0", "x"], ["h", "ys"], name="scan", body=body, num_scan_inputs=1,
                          scan_output_axes=[0])],
        "tiny_scan",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, 16])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, ["T", 1, 16])],
    )
    return _model(graph)


def tiny_outer_weight_body(kind: str, seed: int = 0, width: int = 64) -> onnx.ModelProto:
    """A Loop, If or Scan whose body MatMul reads a weight of the main graph (``kind``: "loop",
    "if", "scan"); in the If both branches read it, through different activations. Input ``x``
    (1, width) for loop/if (if: also ``flag``, a bool), (T, 1, width) for scan."""
    rng = np.random.default_rng(seed)
    v = [1, width]

    def vi(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, v if shape is None else shape)

    outer = [_init("outer_w", rng.normal(0, 1.2 / np.sqrt(width), (width, width))),
             _init("in_w", rng.normal(0, 1.2 / np.sqrt(width), (width, width)))]
    inputs = [vi("x")]
    if kind == "loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("MatMul", ["h_in", "outer_w"], ["mm"], name="body_matmul"),
             helper.make_node("Tanh", ["mm"], ["h_out"], name="body_tanh")],
            "loop_body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in")],
            [vi("cond_out", TensorProto.BOOL, []), vi("h_out")])
        outer.append(onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"))
        nodes = [helper.make_node("MatMul", ["x", "in_w"], ["h0"], name="in_matmul"),
                 helper.make_node("Loop", ["trips", "", "h0"], ["y"], name="loop", body=body)]
    elif kind == "if":
        def branch(name: str, act: str) -> onnx.GraphProto:
            return helper.make_graph(
                [helper.make_node("MatMul", ["h0", "outer_w"], [f"{name}_mm"], name=f"{name}_matmul"),
                 helper.make_node(act, [f"{name}_mm"], [f"{name}_y"], name=f"{name}_act")],
                name, [], [vi(f"{name}_y")])
        inputs.append(vi("flag", TensorProto.BOOL, []))
        nodes = [helper.make_node("MatMul", ["x", "in_w"], ["h0"], name="in_matmul"),
                 helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=branch("then", "Tanh"),
                                  else_branch=branch("else", "Sigmoid"))]
    elif kind == "scan":
        body = helper.make_graph(
            [helper.make_node("MatMul", ["x_t", "outer_w"], ["xw"], name="scan_matmul"),
             helper.make_node("Tanh", ["xw"], ["act"], name="scan_tanh"),
             helper.make_node("Add", ["act", "h_prev"], ["h_next"], name="scan_add"),
             helper.make_node("Identity", ["h_next"], ["y_t"], name="scan_out")],
            "scan_body", [vi("h_prev"), vi("x_t")], [vi("h_next"), vi("y_t")])
        inputs = [vi("x", shape=["T", 1, width])]
        outer.append(onnx.numpy_helper.from_array(np.zeros(v, np.float32), "h_zero"))
        nodes = [helper.make_node("Scan", ["h_zero", "x"], ["y", "ys"], name="scan", body=body, num_scan_inputs=1)]
        outer = [outer[0], outer[2]]
    else:
        raise ValueError(kind)
    outputs = [vi("y")] + ([vi("ys", shape=["T", 1, width])] if kind == "scan" else [])
    return _model(helper.make_graph(nodes, f"tiny_outer_{kind}", inputs, outputs, outer))
