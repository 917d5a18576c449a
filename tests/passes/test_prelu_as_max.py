"""PRelu written as Max(x, slope * x): the same values wherever every slope is at most 1.

onnxruntime has no integer PRelu and its float PRelu kernel is slow (MTCNN's O-Net ran slower
than fp32 as int8 because of it); the rewrite must give bit-identical outputs, leave slopes
above 1 or not constant alone, and run on the CPU target only.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxquant
from onnxquant.passes.prelu_as_max import prelu_as_max
from tests.conftest import INTEGER_KERNELS

C, H, W = 6, 8, 8


def _conv_prelu(slope: np.ndarray, constant_node: bool = False) -> onnx.ModelProto:
    """Conv -> PRelu(slope) -> Conv -> PRelu(slope) -> GlobalAveragePool; the first PRelu's value
    is an output too."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)
             for name, shape in (("w0", (C, 3, 3, 3)), ("b0", (C,)), ("w1", (C, C, 1, 1)), ("b1", (C,)))]
    slope_node = []
    if constant_node:
        slope_node = [helper.make_node("Constant", [], ["slope"], name="slope_const",
                                       value=numpy_helper.from_array(slope.astype(np.float32)))]
    else:
        inits.append(numpy_helper.from_array(slope.astype(np.float32), "slope"))
    nodes = [
        *slope_node,
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c0", "slope"], ["p0"], name="prelu0"),
        helper.make_node("Conv", ["p0", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("PRelu", ["c1", "slope"], ["p1"], name="prelu1"),
        helper.make_node("GlobalAveragePool", ["p1"], ["out"], name="pool"),
    ]
    graph = helper.make_graph(nodes, "conv_prelu",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, C, 1, 1]),
                               helper.make_tensor_value_info("p0", onnx.TensorProto.FLOAT, [1, C, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _samples(n: int = 12) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((1, 3, H, W)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], output: str = "out") -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([output], feed)[0]


MIXED_SLOPES = np.array([-0.47, -0.05, 1e-3, 0.25, 0.75, 1.0], np.float32).reshape(C, 1, 1)


@pytest.mark.parametrize("slope, constant_node", [
    (MIXED_SLOPES, False),  # per channel, negative, near zero and exactly 1 among them
    (MIXED_SLOPES, True),  # the slope in a Constant node
    (np.array([0.1], np.float32), False),  # one slope for every channel
])
def test_rewrite_gives_bit_identical_values(slope, constant_node):
    model = _conv_prelu(slope, constant_node)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert prelu_as_max(rewritten) == 2
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "PRelu" not in ops and ops.count("Max") == 2 and ops.count("Mul") == 2
    assert [n.name for n in rewritten.graph.node if n.op_type == "Max"] == ["prelu0", "prelu1"]
    for feed in _samples(4):
        for output in ("p0", "out"):  # the first PRelu's value itself, and the model's output
            np.testing.assert_array_equal(_run(rewritten, feed, output), _run(model, feed, output))


@pytest.mark.parametrize("slope", [
    np.array([0.5, 1.5, 0.2, 0.1, 0.3, 0.1], np.float32).reshape(C, 1, 1),  # one above 1
    np.array([0.5, 0.0, 0.2, 0.1, 0.3, 0.1], np.float32).reshape(C, 1, 1),  # a zero: 0 * inf is NaN
    np.full((C, H, W), 0.25, np.float32),  # one per element: a float weight, reported by its PRelu
])
def test_slopes_that_are_not_rewritten(slope):
    model = _conv_prelu(slope)
    assert prelu_as_max(model) == 0
    assert [n.op_type for n in model.graph.node].count("PRelu") == 2


def test_infinite_inputs_keep_their_values():
    x = np.array([np.inf, -np.inf, 3.0, -3.0], np.float32).reshape(1, 4)
    slope = np.array([0.5, -0.5, 1e-3, 1.0], np.float32)
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"], name="p")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(slope, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert prelu_as_max(rewritten) == 1
    np.testing.assert_array_equal(_run(rewritten, {"x": x}, "y"), _run(model, {"x": x}, "y"))


def test_new_names_are_new_inside_bodies_too():
    """An If branch that already defines ``p0_scaled``: the Mul's output must take another name."""
    model = _conv_prelu(MIXED_SLOPES)
    branch = helper.make_graph([helper.make_node("Identity", ["p0"], ["p0_scaled"], name="inner")], "then",
                               [], [helper.make_tensor_value_info("p0_scaled", onnx.TensorProto.FLOAT, [1, C, H, W])])
    other = helper.make_graph([helper.make_node("Identity", ["p0"], ["p0_other"], name="inner2")], "else",
                              [], [helper.make_tensor_value_info("p0_other", onnx.TensorProto.FLOAT, [1, C, H, W])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["branch_out"], name="if0",
                                             then_branch=branch, else_branch=other))
    model.graph.output.append(helper.make_tensor_value_info("branch_out", onnx.TensorProto.FLOAT, [1, C, H, W]))
    assert prelu_as_max(model) == 2
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert "p0_scaled" not in {o for n in muls for o in n.output}
    onnx.checker.check_model(model, full_check=True)

    fed = _conv_prelu(MIXED_SLOPES)
    del fed.graph.initializer[-1]  # the slope becomes a graph input: unknown values
    fed.graph.input.append(helper.make_tensor_value_info("slope", onnx.TensorProto.FLOAT, [C, 1, 1]))
    assert prelu_as_max(fed) == 0


def test_quantized_model_has_no_prelu_on_the_cpu_and_keeps_it_for_qnn():
    model = _conv_prelu(MIXED_SLOPES)
    cpu = onnxquant.quantize(model, _samples(), INTEGER_KERNELS)
    assert not any(n.op_type == "PRelu" for n in cpu.model.graph.node)
    assert any("2 PRelu as Max(x, slope * x)" in note for note in cpu.notes)
    feed = _samples(1)[0]
    ref, got = _run(model, feed), _run(cpu.model, feed)
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()
    qnn = onnxquant.quantize(model, _samples(), onnxquant.Recipe(target="qnn"))
    assert sum(n.op_type == "PRelu" for n in qnn.model.graph.node) == 2


@pytest.mark.parametrize("exclude, kept", [(("op:PRelu",), ["prelu0", "prelu1"]), (("prelu1",), ["prelu1"])])
def test_an_excluded_prelu_stays_a_prelu(exclude, kept):
    """``--exclude op:PRelu`` means "keep my PRelu layers as they are": the pattern selects the
    input's PRelu, which the CPU rewrite must then leave alone (it once said "matched no node")."""
    recipe = INTEGER_KERNELS.with_overrides(nodes={"exclude": exclude})
    result = onnxquant.quantize(_conv_prelu(MIXED_SLOPES), _samples(), recipe)
    assert [n.name for n in result.model.graph.node if n.op_type == "PRelu"] == kept
    assert sum(n.op_type == "Max" for n in result.model.graph.node) == 2 - len(kept)
    assert not any("matched" in w for w in result.warnings)


def test_an_included_prelu_rewritten_after_planning_is_no_warning():
    """``--include op:PRelu,op:Conv``: the pattern selects the planned model's PRelus, which the CPU
    rewrite makes Max after planning; the result has no PRelu, but the pattern was no mistake and
    was not applied too late (it was said to have matched only nodes replaced before it applied)."""
    recipe = INTEGER_KERNELS.with_overrides(nodes={"include": ("op:PRelu", "op:Conv")})
    result = onnxquant.quantize(_conv_prelu(MIXED_SLOPES), _samples(), recipe)
    assert not any(n.op_type == "PRelu" for n in result.model.graph.node)
    assert not any(w.startswith("node pattern") for w in result.warnings), result.warnings
    mistyped = onnxquant.quantize(_conv_prelu(MIXED_SLOPES), _samples(),
                                  INTEGER_KERNELS.with_overrides(nodes={"include": ("op:PReLU", "op:Conv")}))
    assert [w for w in mistyped.warnings if w.startswith("node pattern")] == [
        "node pattern 'op:PReLU' (include) matched no node: it changed nothing (patterns are a node name, op:TYPE "
        "or re:REGEX; onnxquant inspect --layers lists the layer names)"]
