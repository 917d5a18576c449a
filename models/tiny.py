"""Tiny generated models for tests and the quick start (seeded random weights, built in code)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """A test model around ``graph``, with the IR version onnxruntime accepts for ``opset``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxquant-tests")
    model.ir_version = 8 if opset >= 13 else 7
    return model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def tiny_cnn(opset: int = 17, batch: int | str = "N", seed: int = 0, constant_weights: bool = False) -> onnx.ModelProto:
    """Conv-ReLU, depthwise Conv-Clip, residual Add, MaxPool, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3))
    b1 = rng.normal(0, 0.1, 8)
    w2 = rng.normal(0, 0.3, (8, 1, 3, 3))
    b2 = rng.normal(0, 0.1, 8)
    w3 = rng.normal(0, 0.3, (8, 8, 1, 1))
    fc = rng.normal(0, 0.3, (4, 8))
    fcb = rng.normal(0, 0.1, 4)
    inits = [
        _init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2), _init("w3", w3),
        _init("fc", fc), _init("fcb", fcb),
        _init("clip_min", np.array(0.0)), _init("clip_max", np.array(6.0)),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
    ]
    clip_inputs = ["c2", "clip_min", "clip_max"] if opset >= 11 else ["c2"]
    clip_attrs = {} if opset >= 11 else {"min": 0.0, "max": 6.0}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dwconv", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", clip_inputs, ["r2"], name="relu6", **clip_attrs),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="pwconv"),
        helper.make_node("Add", ["c3", "r1"], ["s"], name="residual"),
        helper.make_node("MaxPool", ["s"], ["p"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "flat_shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    model = _model(graph, opset)
    if constant_weights:
        model = weights_as_constants(model)
    onnx.checker.check_model(model)
    return model


def weights_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its initializers stored as Constant nodes (as Paddle exports do)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = [helper.make_node("Constant", [], [i.name], value=i, name=f"const_{i.name}") for i in out.graph.initializer]
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(constants + nodes)
    del out.graph.initializer[:]
    return out


def tiny_mlp(seed: int = 0, hidden: int = 16) -> onnx.ModelProto:
    """MatMul + bias Add + Relu + MatMul over a dynamic (batch, sequence, features) input."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, hidden))), _init("b1", rng.normal(0, 0.1, hidden)),
        _init("w2", rng.normal(0, 0.3, (hidden, 4))),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        inits,
    )
    return _model(graph)


def tiny_if_model() -> onnx.ModelProto:
    """A Conv whose result goes through an If with Conv-bearing branches (nested subgraphs)."""
    rng = np.random.default_rng(1)
    w = _init("w", rng.normal(0, 0.3, (4, 3, 3, 3)))
    wb = _init("wb", rng.normal(0, 0.3, (4, 4, 1, 1)))

    def branch(name: str, scale: float) -> onnx.GraphProto:
        s = _init(f"{name}_s", np.array(scale))
        return helper.make_graph(
            [helper.make_node("Conv", ["c", "wb"], [f"{name}_c"], name=f"{name}_conv"),
             helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [f"{name}_out"], name=f"{name}_mul")],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 4, 8, 8])], [s],
        )

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("If", ["flag"], ["y"], name="if", then_branch=branch("then", 1.0), else_branch=branch("else", -1.0)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, wb],
    )
    return _model(graph)


def image_samples(count: int, seed: int = 0, batch: int = 1, size: int = 16) -> list[dict[str, np.ndarray]]:
    """Smooth random images (so convolutions see image-like correlations)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = rng.normal(0, 1, (batch, 3, size // 4, size // 4)).astype(np.float32)
        img = np.kron(base, np.ones((1, 1, 4, 4), np.float32)) + rng.normal(0, 0.1, (batch, 3, size, size)).astype(np.float32)
        out.append({"x": img.astype(np.float32)})
    return out


def tiny_attention(seq: int | str = "S", seed: int = 0) -> onnx.ModelProto:
    """One attention-like block: masked softmax (finfo.min mask), exact GELU as Erf, residual.

    The pieces that break NPU quantization in exported transformers, at toy size.
    """
    rng = np.random.default_rng(seed)
    d = 8
    inits = [
        _init("wq", rng.normal(0, 0.4, (d, d))), _init("wk", rng.normal(0, 0.4, (d, d))),
        _init("w1", rng.normal(0, 0.4, (d, d))), _init("b1", rng.normal(0, 0.1, d)),
        _init("sqrt2", np.array(np.sqrt(2.0))), _init("one", np.array(1.0)), _init("half", np.array(0.5)),
        _init("neg", np.array(np.finfo(np.float32).min)), _init("zero", np.array(0.0)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Where", ["keep", "zero", "neg"], ["bias"], name="mask"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "x"], ["ctx"], name="ctx"),
        helper.make_node("MatMul", ["ctx", "w1"], ["h0"], name="ffn"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="ffn_bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["hs"], name="gelu_div"),
        helper.make_node("Erf", ["hs"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["h", "e1"], ["he"], name="gelu_mul"),
        helper.make_node("Mul", ["he", "half"], ["g"], name="gelu_half"),
        helper.make_node("Add", ["g", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d]),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, [1, 1, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])],
        inits,
    )
    model = _model(graph)
    onnx.checker.check_model(model)
    return model


def attention_samples(count: int, seq: int = 6, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Inputs for ``tiny_attention``: the last positions of each sample are padding (masked)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        keep = np.zeros((1, 1, seq), bool)
        keep[..., : seq - i % 3] = True
        samples.append({"x": rng.normal(0, 1, (1, seq, 8)).astype(np.float32), "keep": keep})
    return samples


def tiny_mbconv(seed: int = 0, dead: tuple[int, ...] = (), batch: int | str = "N") -> onnx.ModelProto:
    """An inverted-residual block and a head, as in MobileNetV2/EfficientNet, unfolded BatchNorm
    included: expand 1x1 Conv-ReLU6, depthwise 3x3 Conv-ReLU, project 1x1 Conv, residual Add,
    3x3 Conv-BatchNorm-ReLU, GlobalAveragePool, Flatten, Gemm. ``dead``: expand channels whose
    weights are zero (their bias stays: a dead channel still outputs a constant)."""
    rng = np.random.default_rng(seed)
    w_expand = rng.normal(0, 0.4, (16, 4, 1, 1))
    w_expand[list(dead)] = 0.0
    b_expand = rng.normal(0, 0.2, 16)
    b_expand[list(dead)] = -np.abs(b_expand[list(dead)])  # ReLU6 of a negative bias: exactly zero
    inits = [
        _init("w_expand", w_expand), _init("b_expand", b_expand),
        _init("w_dw", rng.normal(0, 0.4, (16, 1, 3, 3))), _init("b_dw", rng.normal(0, 0.2, 16)),
        _init("w_project", rng.normal(0, 0.3, (4, 16, 1, 1))), _init("b_project", rng.normal(0, 0.1, 4)),
        _init("w_head", rng.normal(0, 0.3, (8, 4, 3, 3))),
        _init("bn_scale", rng.uniform(0.5, 1.5, 8)), _init("bn_bias", rng.normal(0, 0.1, 8)),
        _init("bn_mean", rng.normal(0, 0.1, 8)), _init("bn_var", rng.uniform(0.5, 1.5, 8)),
        _init("fc", rng.normal(0, 0.3, (5, 8))), _init("fcb", rng.normal(0, 0.1, 5)),
        _init("zero", np.array(0.0)), _init("six", np.array(6.0)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_expand", "b_expand"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "zero", "six"], ["e6"], name="expand_relu6"),
        helper.make_node("Conv", ["e6", "w_dw", "b_dw"], ["d"], name="depthwise", pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["d"], ["dr"], name="depthwise_relu"),
        helper.make_node("Conv", ["dr", "w_project", "b_project"], ["p"], name="project"),
        helper.make_node("Add", ["p", "x"], ["s"], name="residual"),
        helper.make_node("Conv", ["s", "w_head"], ["h"], name="head", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["h", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["hb"], name="head_bn"),
        helper.make_node("Relu", ["hb"], ["hr"], name="head_relu"),
        helper.make_node("GlobalAveragePool", ["hr"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mbconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    model = _model(graph)
    onnx.checker.check_model(model)
    return model


def tiny_detector(seed: int = 0, size: int = 96, classes: int = 8) -> onnx.ModelProto:
    """A YOLO-style detector: a Conv/SiLU backbone with a residual, two heads at strides 8 and 16,
    their predictions flattened and concatenated, boxes (sigmoid times anchor scales) and class
    scores (sigmoid) split off and joined again, transposed to (batch, boxes, 4 + classes).

    Big enough that onnxruntime's kernels split work across threads (the ``--threads`` test)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, act: bool = True) -> str:
        inits.append(_init(f"{name}_w", rng.normal(0, 1, (cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))))
        inits.append(_init(f"{name}_b", rng.normal(0, 0.1, cout)))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name,
                                      pads=[k // 2] * 4, strides=[stride, stride]))
        if not act:
            return name
        nodes.append(helper.make_node("Sigmoid", [name], [f"{name}_sig"], name=f"{name}_sig"))
        nodes.append(helper.make_node("Mul", [name, f"{name}_sig"], [f"{name}_silu"], name=f"{name}_silu"))
        return f"{name}_silu"

    x = conv(conv("images", 3, 16, 3, 2, "stem"), 16, 32, 3, 2, "b1")
    nodes.append(helper.make_node("Add", [x, conv(x, 32, 32, 3, 1, "b2")], ["res"], name="res"))
    p3 = conv("res", 32, 48, 3, 2, "b3")
    p4 = conv(p3, 48, 64, 3, 2, "b4")
    flat = []
    for level, (feature, channels, stride) in enumerate([(p3, 48, 8), (p4, 64, 16)]):
        head = conv(feature, channels, 4 + classes, 1, 1, f"head{level}", act=False)
        inits.append(numpy_helper.from_array(np.array([1, 4 + classes, (size // stride) ** 2], np.int64), f"shape{level}"))
        nodes.append(helper.make_node("Reshape", [head, f"shape{level}"], [f"flat{level}"], name=f"flat{level}"))
        flat.append(f"flat{level}")
    inits.append(numpy_helper.from_array(np.array([4, classes], np.int64), "split"))
    inits.append(_init("anchor_scale", rng.uniform(1, 90, (1, 4, 1))))
    nodes += [
        helper.make_node("Concat", flat, ["cat"], name="cat", axis=2),
        helper.make_node("Split", ["cat", "split"], ["box_raw", "cls_raw"], name="split", axis=1),
        helper.make_node("Sigmoid", ["box_raw"], ["box_sig"], name="box_sig"),
        helper.make_node("Mul", ["box_sig", "anchor_scale"], ["boxes"], name="boxes"),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="scores"),
        helper.make_node("Concat", ["boxes", "scores"], ["pred"], name="pred", axis=1),
        helper.make_node("Transpose", ["pred"], ["output"], name="transpose", perm=[0, 2, 1]),
    ]
    boxes = sum((size // s) ** 2 for s in (8, 16))
    graph = helper.make_graph(nodes, "tiny_detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, boxes, 4 + classes])],
                              inits)
    model = _model(graph)
    onnx.checker.check_model(model)
    return model


CHAIN_CHANNELS = 4


def conv_chain(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A long chain of about ``nodes`` nodes, for scaling checks: blocks of Conv, a constant
    per-channel Mul (folded into the Conv), Relu, and every fourth block a residual Add."""
    rng = np.random.default_rng(seed)
    graph_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x, block, c = "x", 0, CHAIN_CHANNELS
    while len(graph_nodes) < nodes:
        inits += [_init(f"w{block}", rng.normal(0, 0.5, (c, c, 1, 1))), _init(f"b{block}", rng.normal(0, 0.1, c)),
                  _init(f"s{block}", rng.uniform(0.5, 1.5, (1, c, 1, 1)))]
        graph_nodes += [
            helper.make_node("Conv", [x, f"w{block}", f"b{block}"], [f"c{block}"], name=f"conv{block}"),
            helper.make_node("Mul", [f"c{block}", f"s{block}"], [f"m{block}"], name=f"mul{block}"),
            helper.make_node("Relu", [f"m{block}"], [f"r{block}"], name=f"relu{block}"),
        ]
        out = f"r{block}"
        if block % 4 == 3:
            graph_nodes.append(helper.make_node("Add", [out, x], [f"a{block}"], name=f"add{block}"))
            out = f"a{block}"
        x, block = out, block + 1
    graph = helper.make_graph(graph_nodes, "conv_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 4, 4])], inits)
    return _model(graph)


def conv_chain_samples(count: int = 2, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, CHAIN_CHANNELS, 4, 4)).astype(np.float32)} for _ in range(count)]


def dense_chain(width: int, depth: int = 3, features: int = 10, seed: int = 0) -> onnx.ModelProto:
    """``depth`` MatMul + Add + Relu layers of ``width`` on a (rows, features) table: a
    scikit-learn-like MLP, the shape ``dense_cost.py``'s figures were timed on."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, k = [], [], "x", features
    for i in range(depth):
        inits += [numpy_helper.from_array((rng.standard_normal((k, width)) / np.sqrt(k)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(width) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"dense{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
        x, k = f"r{i}", width
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
