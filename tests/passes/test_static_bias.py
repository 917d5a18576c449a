"""A static-shape 3-D Linear's bias given the activation's rank, so that onnxruntime's MatMulAddFusion
(which would turn the quantized MatMul into a Gemm between reshapes, no integer kernel) declines it;
2-D MatMuls (MLPs) and MatMuls of unknown rank left as they are."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxquant.passes.declared_shapes import declared_shapes
from onnxquant.passes.static_bias import static_biases
from tests.conftest import run

WIDTH, OUT = 8, 6


def _linear(shape: list) -> onnx.ModelProto:
    """Relu(Relu(x) @ W + b), x of ``shape`` (last dim WIDTH)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]),
         helper.make_node("MatMul", ["h", "w"], ["hw"]),
         helper.make_node("Add", ["hw", "b"], ["y"]),
         helper.make_node("Relu", ["y"], ["out"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(rng.normal(size=(WIDTH, OUT)).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.normal(size=OUT).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    """The op types onnxruntime runs after its optimizer (MatMulAddFusion among it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_a_static_3d_bias_gets_the_activation_rank_and_onnxruntime_keeps_the_matmul(tmp_path):
    model = _linear([2, 5, WIDTH])
    assert "Gemm" in _ort_ops(model, tmp_path)  # what onnxruntime does to it as it is
    work = onnx.ModelProto()
    work.CopyFrom(model)
    assert static_biases(work, declared_shapes(work)) == 1
    add = next(n for n in work.graph.node if n.op_type == "Add")
    bias = next(i for i in work.graph.initializer if i.name == add.input[1])
    assert list(bias.dims) == [1, 1, OUT]
    assert "b" not in {i.name for i in work.graph.initializer}  # the 1-D bias, now unread, is gone
    ops = _ort_ops(work, tmp_path)
    assert "Gemm" not in ops and "MatMul" in ops
    x = {"x": np.random.default_rng(1).normal(size=(2, 5, WIDTH)).astype(np.float32)}
    np.testing.assert_array_equal(run(work, x)[0], run(model, x)[0])


@pytest.mark.parametrize("shape", [
    [4, WIDTH],  # a 2-D MLP: onnxruntime makes it a plain Gemm, which has an integer kernel
    ["B", WIDTH],  # rank 2, batch free
    None,  # rank unknown: cannot be told from an MLP
    ["B", 5, WIDTH],  # 3-D with a free dim: MatMulAddFusion does not reshape it either
])
def test_anything_else_is_left_as_it_is(shape):
    model = _linear(shape)
    before = model.SerializeToString()
    assert static_biases(model, declared_shapes(model)) == 0
    assert model.SerializeToString() == before


def test_a_free_dim_3d_matmul_needs_no_rank_bias(tmp_path):
    """Why a 3-D MatMul with a free dim is left: onnxruntime's MatMulAddFusion does not reshape it
    either, the MatMul and Add survive its optimizer as they are."""
    ops = _ort_ops(_linear(["B", 5, WIDTH]), tmp_path)
    assert "Gemm" not in ops and "MatMul" in ops
