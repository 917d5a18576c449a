"""Reshape -> Gemm -> Reshape around a 3-D activation (onnxruntime's optimizer on a static-shape
export) written back as MatMul + Add: equal outputs, and nothing else touched."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxquant.passes.gemm_as_matmul import gemm_as_matmul
from tests.conftest import run

BATCH, TOKENS, WIDTH, OUT = 2, 5, 8, 6


def _flattened_linear(trans_b: int = 0, flat: tuple[int, int] = (BATCH * TOKENS, WIDTH),
                      back: tuple[int, ...] | None = None, alpha: float = 1.0,
                      shape: list | None = None, out: int = OUT, bias_shape: tuple[int, ...] | None = None,
                      trans_a: int = 0, beta: float = 1.0, flat_read_twice: bool = False,
                      gemm_is_output: bool = False) -> onnx.ModelProto:
    """Relu(x) -> Reshape(flat) -> Gemm(W, b) -> Reshape(back) -> Relu, x of shape (2, 5, 8)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(WIDTH, out)).astype(np.float32)
    inits = [numpy_helper.from_array(weight.T.copy() if trans_b else weight, "w"),
             numpy_helper.from_array(rng.normal(size=bias_shape or (out,)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(flat, np.int64), "flat"),
             numpy_helper.from_array(np.array(back or (BATCH, TOKENS, out), np.int64), "back")]
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Reshape", ["h", "flat"], ["h2"]),
             helper.make_node("Gemm", ["h2", "w", "b"], ["y2"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("Reshape", ["y2", "back"], ["y"]),
             helper.make_node("Relu", ["y"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if flat_read_twice:
        nodes.append(helper.make_node("Relu", ["h2"], ["h2_relu"]))
        outputs.append(helper.make_tensor_value_info("h2_relu", TensorProto.FLOAT, None))
    if gemm_is_output:
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "flattened_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape or [BATCH, TOKENS, WIDTH])],
                              outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@pytest.mark.parametrize("trans_b, bias_shape", [
    (0, None), (1, None),
    (0, (1, OUT)),  # a (1, N) C: one bias row added to every row
    (0, (1,)),  # a single value, added everywhere
    (0, (1, 1)),
])
def test_the_flattened_linear_becomes_matmul_add_with_equal_outputs(trans_b, bias_shape):
    model = _flattened_linear(trans_b, bias_shape=bias_shape)
    work = _copy(model)
    assert gemm_as_matmul(work) == 1
    ops = Counter(n.op_type for n in work.graph.node)
    assert ops == Counter({"Relu": 2, "MatMul": 1, "Add": 1})
    matmul = next(n for n in work.graph.node if n.op_type == "MatMul")
    assert matmul.input[0] == "h"  # the 3-D activation itself
    add = next(n for n in work.graph.node if n.op_type == "Add")
    assert [list(i.dims) for i in work.graph.initializer if i.name == add.input[1]] == [[OUT]]
    assert not {"flat", "back"} & {i.name for i in work.graph.initializer}  # the shape constants went with them
    x = {"x": np.random.default_rng(1).normal(size=(BATCH, TOKENS, WIDTH)).astype(np.float32)}
    np.testing.assert_allclose(run(work, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [
    {"back": (TOKENS, BATCH, OUT)},  # not the inverse of the flatten: moves rows
    {"flat": (BATCH, TOKENS * WIDTH)},  # not a flatten of the leading dims
    {"alpha": 2.0},  # a scaled Gemm
    {"shape": ["B", TOKENS, WIDTH]},  # the activation's shape is not declared
    # a per-row C of shape (M, 1), M == N == 10: its size is N, yet it is no channel bias
    {"out": BATCH * TOKENS, "bias_shape": (BATCH * TOKENS, 1)},
    {"out": BATCH * TOKENS, "bias_shape": (BATCH * TOKENS, BATCH * TOKENS)},  # a per-element C
    # A transposed (square: 8 rows of 8, x of shape (2, 4, 8)): a valid Gemm, but not x @ W
    {"trans_a": 1, "shape": [2, 4, WIDTH], "flat": (8, WIDTH), "back": (2, 4, OUT)},
    {"beta": 0.5},  # a scaled bias
    {"flat_read_twice": True},  # the flattened activation is read by another node too
    {"gemm_is_output": True},  # the 2-D product is a graph output
])
def test_anything_else_is_left_as_it_is(change):
    model = _flattened_linear(**change)
    if "flat" not in change or "trans_a" in change:  # (the new flatten is a Gemm of mismatched shapes)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)  # (each is a valid graph, not declined for being broken)
    before = model.SerializeToString()
    assert gemm_as_matmul(model) == 0
    assert model.SerializeToString() == before


def test_a_plain_2d_gemm_is_left_as_it_is():
    """An MLP's Gemm on a 2-D input has no reshapes around it: nothing to undo."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(rng.normal(size=(WIDTH, OUT)).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.normal(size=OUT).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert gemm_as_matmul(model) == 0
    assert model.SerializeToString() == before


def test_new_names_clash_with_no_node_and_stale_2d_shapes_go():
    """A node already named as the new bias Add would be keeps its name alone; the value_info of the
    removed 2-D tensors (what an earlier shape inference wrote) goes with them."""
    model = _flattened_linear()
    model.graph.node[0].name = "y_bias"  # (the name the unnamed Gemm's bias Add would take)
    model.graph.value_info.extend([helper.make_tensor_value_info("h2", TensorProto.FLOAT, [BATCH * TOKENS, WIDTH]),
                                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, [BATCH * TOKENS, OUT]),
                                   helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, TOKENS, OUT])])
    assert gemm_as_matmul(model) == 1
    names = [n.name for n in model.graph.node if n.name]
    assert len(names) == len(set(names))
    assert [v.name for v in model.graph.value_info] == ["y"]
    x = {"x": np.random.default_rng(1).normal(size=(BATCH, TOKENS, WIDTH)).astype(np.float32)}
    np.testing.assert_allclose(run(model, x)[0], run(_flattened_linear(), x)[0], rtol=1e-5, atol=1e-5)


def test_a_weight_tied_between_two_transposed_gemms_is_copied_once():
    """Two Linears reading one (N, K) weight with transB: one transposed copy, read by both MatMuls."""
    model = _flattened_linear(trans_b=1)
    graph = model.graph
    second = [helper.make_node("Reshape", ["h", "flat"], ["g2"]),
              helper.make_node("Gemm", ["g2", "w", "b2"], ["z2"], transB=1),
              helper.make_node("Reshape", ["z2", "back"], ["z"])]
    graph.node.extend(second)
    graph.initializer.append(numpy_helper.from_array(np.arange(OUT, dtype=np.float32), "b2"))
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    reference = _copy(model)
    assert gemm_as_matmul(model) == 2
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len({m.input[1] for m in matmuls}) == 1
    assert [i.name for i in model.graph.initializer if i.name.startswith("w")] == ["w_transposed"]
    x = {"x": np.random.default_rng(1).normal(size=(BATCH, TOKENS, WIDTH)).astype(np.float32)}
    for got, want in zip(run(model, x), run(reference, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
