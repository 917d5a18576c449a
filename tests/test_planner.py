import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.tiny import tiny_cnn, tiny_mlp
from onnxquant.ops.rules import weight_axis
from onnxquant.passes.prepare import prepare_model
from onnxquant.planner import node_names, select
from onnxquant.recipe import NodeSelection, Recipe


def _select(model: onnx.ModelProto, recipe: Recipe = Recipe()):
    prepared, _ = prepare_model(model, simplify=False)
    node_names(prepared)
    return prepared, select(prepared, recipe)


def test_weight_axes_per_op():
    node = lambda op, **a: helper.make_node(op, [], [], **a)
    assert weight_axis(node("Conv"), 4) == 0
    assert weight_axis(node("ConvTranspose"), 4) == 1
    assert weight_axis(node("ConvTranspose", group=2), 4) is None
    assert weight_axis(node("Gemm", transB=1), 2) == 0
    assert weight_axis(node("Gemm"), 2) == 1
    assert weight_axis(node("MatMul"), 2) == 1
    assert weight_axis(node("MatMul"), 3) is None


def test_cnn_selection_fuses_activations_and_shares_pool_scale():
    _, sel = _select(tiny_cnn())
    assert set(sel.quantized) == {"conv1", "relu1", "dwconv", "relu6", "pwconv", "residual", "maxpool", "gap", "flatten", "fc"}
    # Conv outputs feeding only a Relu/Clip are not quantized: the activation is fused.
    assert "c1" not in sel.activations and "c2" not in sel.activations
    assert {"x", "r1", "r2", "c3", "s", "p", "g", "f"} <= set(sel.activations)
    assert sel.groups["p"] == sel.groups["s"]  # MaxPool shares its input's scale
    assert sel.groups["f"] == sel.groups["g"]  # Reshape too
    assert "logits" not in sel.activations  # graph outputs stay float
    axes = {node: axis for (node, _), (_, axis, _) in sel.weights.items()}
    assert axes == {"conv1": 0, "dwconv": 0, "pwconv": 0, "fc": 0}
    reduce = {node: r for (node, _), (_, _, r) in sel.weights.items()}
    assert reduce["dwconv"] is False and reduce["conv1"] is True  # depthwise keeps 8 bits


def test_bias_add_after_matmul_stays_float():
    _, sel = _select(tiny_mlp())
    assert set(sel.quantized) == {"mm1", "mm2"}
    assert "h" not in sel.activations  # float output: MatMulIntegerToFloat
    assert sel.float_nodes["bias1"][1].startswith("has a constant operand")


def test_include_exclude_by_name_op_and_regex():
    _, sel = _select(tiny_cnn(), Recipe(nodes=NodeSelection(exclude=("op:Gemm", "re:^dw"))))
    assert "fc" not in sel.quantized and "dwconv" not in sel.quantized
    assert sel.float_nodes["fc"][1] == "excluded by --exclude"
    _, sel = _select(tiny_cnn(), Recipe(nodes=NodeSelection(include=("conv1", "relu1"))))
    assert set(sel.quantized) == {"conv1", "relu1"}


def test_concat_shares_one_scale_across_inputs():
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32) * k, f"w{k}") for k in (1, 2, 3)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="ca"),
        helper.make_node("Conv", ["x", "w2"], ["b"], name="cb"),
        helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
        helper.make_node("Conv", ["c", "w3"], ["y"], name="cy") if False else helper.make_node("Relu", ["c"], ["y"], name="r"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits[:2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, sel = _select(model)
    assert "cat" in sel.quantized
    assert sel.groups["a"] == sel.groups["b"] == sel.groups["c"]


def _c2f_block() -> onnx.ModelProto:
    """YOLOv8's C2f: a Conv's output split in two, one half through a residual Conv, all concatenated."""
    rng = np.random.default_rng(0)
    w = lambda name, o, i: numpy_helper.from_array(rng.normal(0, 0.3, (o, i, 1, 1)).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="c0"),
        helper.make_node("Split", ["c0", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Conv", ["b", "w1"], ["c1"], name="c1"),
        helper.make_node("Add", ["b", "c1"], ["res"], name="residual"),
        helper.make_node("Concat", ["a", "b", "res"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["c2"], name="c2"),
        helper.make_node("Sigmoid", ["c2"], ["y"], name="head"),
    ]
    inits = [w("w0", 4, 3), w("w1", 2, 2), w("w2", 5, 6), numpy_helper.from_array(np.array([2, 2], np.int64), "halves")]
    graph = helper.make_graph(nodes, "c2f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_split_outputs_share_the_input_scale():
    _, sel = _select(_c2f_block())
    assert {"split", "residual", "cat"} <= set(sel.quantized)
    assert {"a", "b"} <= set(sel.activations)
    assert sel.groups["a"] == sel.groups["b"] == sel.groups["c0"]


def test_split_runs_as_int8_data_movement_in_onnxruntime():
    """onnxruntime turns DQ -> Split -> Q (one scale on every output) into a Split of int8 data,
    so the residual Add and the Concat after it become integer kernels: no float round trip."""
    import onnxquant

    rng = np.random.default_rng(1)
    samples = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    result = onnxquant.quantize(_c2f_block(), samples)
    assert result.fusion is not None and result.fusion.round_trips == []
    assert [w for w in result.warnings if "by construction" not in w] == []  # this toy CNN is slower as int8 on x86 without VNNI
    assert result.quantized_nodes == {"Conv": 3, "Split": 1, "Add": 1, "Concat": 1}


def test_dead_channel_bias_scale_never_underflows():
    """A channel whose folded weights are subnormal (about 1e-40) gets the smallest weight scale;
    times a small input scale, the int32 bias scale used to be 0 in float32, and its bias was
    quantized as -inf. The weight scale is raised instead, and every bias stays representable."""
    import warnings

    from onnxquant.planner import _bias_params
    from onnxquant.qparams import MIN_SCALE, asymmetric, dequantize, quantize, symmetric

    weight = np.array([[0.5, -0.25], [1e-40, -2e-40]], np.float32)
    bias = np.array([0.1, -2e-41], np.float32)
    x = asymmetric(0.0, 2e-5)  # a small input range: scale about 8e-8
    w = symmetric(np.abs(weight).max(axis=1), axis=0)
    assert float(w.scale[1]) * float(x.scale) < MIN_SCALE  # the product would underflow
    w_new, b = _bias_params(bias.astype(np.float64), x, w)
    assert np.all(b.scale >= np.float32(MIN_SCALE) * np.float32(0.999))
    assert w_new.scale[0] == w.scale[0]  # a live channel keeps its scale
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize(bias, b)
    assert q[1] == 0 and abs(float(dequantize(q, b)[0]) - 0.1) < 1e-6


def _relu6_concat_net(concat_plain_conv: bool) -> onnx.ModelProto:
    """Conv -> MaxPool -> Clip(0, 6), optionally concatenated with a plain (signed) Conv, then a Conv."""
    rng = np.random.default_rng(0)
    init = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)
    inits = [init("z", 0), init("six", 6), init("wa", rng.normal(0, 1.5, (8, 3, 3, 3))),
             init("wb", rng.normal(0, 0.15, (8, 3, 3, 3))), init("wc", rng.normal(0, 0.3, (4, 16 if concat_plain_conv else 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ca"], name="ca", pads=[1] * 4),
             helper.make_node("MaxPool", ["ca"], ["mp"], name="mp", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Clip", ["mp", "z", "six"], ["a"], name="relu6")]
    head = "a"
    if concat_plain_conv:
        nodes += [helper.make_node("Conv", ["x", "wb"], ["b"], name="cb", pads=[1] * 4),
                  helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1)]
        head = "cat"
    nodes.append(helper.make_node("Conv", [head, "wc"], ["y"], name="cc"))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _quantize_zero_points(model: onnx.ModelProto, recipe) -> tuple[dict[str, int], float]:
    """Each QuantizeLinear's input -> zero point, and the worst SQNR (dB) over three samples."""
    import onnxquant
    from tests.conftest import run
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    res = onnxquant.quantize(model, feeds, recipe.with_overrides(search={"enabled": False}))
    inits = {i.name: numpy_helper.to_array(i) for i in res.model.graph.initializer}
    zps = {n.input[0]: int(inits[n.input[2]]) for n in res.model.graph.node if n.op_type == "QuantizeLinear"}
    sqnr = min(10 * np.log10((w ** 2).sum() / ((w - q) ** 2).sum())
               for w, q in ((run(model, f)[0], run(res.model, f)[0]) for f in feeds[:3]))
    return zps, float(sqnr)


def test_clip_zero_point_lift_spares_a_group_holding_negatives():
    """A Clip output concatenated with a signed tensor shares its scale group: lifting the group's
    zero point to the Clip's bound would wipe the negatives (SQNR 39 -> 17 dB)."""
    from tests.conftest import INTEGER_KERNELS
    zps, sqnr = _quantize_zero_points(_relu6_concat_net(True), INTEGER_KERNELS)
    assert zps["a"] == zps["b"] == zps["cat"] and zps["cat"] > 0  # negatives stay representable
    assert sqnr > 35.0


def test_clip_zero_point_lift_applies_to_a_group_within_the_bound():
    from tests.conftest import INTEGER_KERNELS
    zps, _ = _quantize_zero_points(_relu6_concat_net(False), INTEGER_KERNELS)
    assert zps["a"] == 0  # uint8: lowest value 0 = the Clip's bound, onnxruntime drops the Clip


def test_clip_zero_point_lift_skipped_for_symmetric_activations():
    from tests.conftest import INTEGER_KERNELS
    recipe = INTEGER_KERNELS.with_overrides(quantization={"activation_type": "int8", "activation_symmetric": True})
    zps, _ = _quantize_zero_points(_relu6_concat_net(False), recipe)
    assert zps["a"] == 0  # int8 symmetric: the zero point stays in the middle


def _gemm_model(weight_from: str) -> onnx.ModelProto:
    """A Gemm whose weight is a graph input, a Transpose's output, or a float16 initializer."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])]
    inits, nodes = [], []
    if weight_from == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4]))
    elif weight_from == "Transpose":
        inits.append(numpy_helper.from_array(w.T.copy(), "wt"))
        nodes.append(helper.make_node("Transpose", ["wt"], ["w"], name="t"))
    else:
        inits.append(numpy_helper.from_array(w.astype(np.float16), "w"))
    nodes.append(helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm"))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_weight_that_is_no_float32_initializer_is_told_where_it_comes_from():
    """A user must be able to find the weight a float layer kept: the reason names its source."""
    for weight_from, said in (("input", "graph input"), ("Transpose", "the output of a Transpose node"),
                              ("float16", "stored as float16")):
        model = _gemm_model(weight_from)
        sel = select(model, Recipe())
        assert "gemm" in sel.float_nodes, weight_from
        assert said in sel.float_nodes["gemm"][1], (weight_from, sel.float_nodes["gemm"])
    body = select(_gemm_model("input"), Recipe(), body=True)
    assert "loop-carried value" in body.float_nodes["gemm"][1]
