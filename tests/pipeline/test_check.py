"""The check stage's float report: classic-ML ops whose parameters are attributes (tree
ensembles) are float weights with a true reason, and a run that quantized nothing says so."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.float_weights import attribute_parameter_bytes
from tests.conftest import run


def _trees(features: int = 4) -> onnx.NodeProto:
    """Two decision stumps on features 0 and 1 voting for classes 0 and 1 (ai.onnx.ml, as
    skl2onnx writes a tree ensemble): thresholds and leaf weights are attributes."""
    return helper.make_node(
        "TreeEnsembleClassifier", ["h"], ["label", "probabilities"], domain="ai.onnx.ml", name="trees",
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 1, 1],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"] * 2, nodes_values=[0.0, 0.0, 0.0, 0.5, 0.0, 0.0],
        nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        class_treeids=[0, 0, 0, 0, 1, 1, 1, 1], class_nodeids=[1, 1, 2, 2, 1, 1, 2, 2],
        class_ids=[0, 1, 0, 1] * 2, class_weights=[0.4, 0.1, 0.1, 0.4, 0.3, 0.2, 0.2, 0.3],
        classlabels_int64s=[0, 1], post_transform="NONE")


def _model(with_matmul: bool) -> onnx.ModelProto:
    nodes, inits = [], []
    if with_matmul:
        rng = np.random.default_rng(0)
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (16, 4)).astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["h"], name="features"))
    else:
        nodes.append(helper.make_node("Identity", ["x"], ["h"], name="features"))
    nodes.append(_trees())
    width = 16 if with_matmul else 4
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


def _samples(width: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (4, width)).astype(np.float32)} for _ in range(8)]


def test_a_tree_ensemble_is_a_float_weighted_node_with_its_reason():
    model = _model(with_matmul=True)
    assert attribute_parameter_bytes(model.graph.node[1]) == 4 * (6 + 8)  # thresholds and leaf weights
    result = onnxquant.quantize(model, _samples(16), onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert result.quantized_nodes == {"MatMul": 1}
    trees = next(f for f in result.float_nodes if f.name == "trees")
    assert "ai.onnx.ml" in trees.reason and "no integer form" in trees.reason
    assert trees.weight_bytes == 4 * (6 + 8) and 0 < trees.share < 1
    assert not any("nothing was quantized" in w for w in result.warnings)
    # the trees read int8 features: a row flips only where a feature sits at a threshold
    same = [np.array_equal(run(model, feed)[1][k], run(result.model, feed)[1][k])
            for feed in _samples(16) for k in range(4)]
    assert np.mean(same) >= 0.75


def test_a_model_with_nothing_to_quantize_says_so():
    result = onnxquant.quantize(_model(with_matmul=False), _samples(4),
                                onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert result.quantized_nodes == {}
    assert any(w.startswith("nothing was quantized") for w in result.warnings)
    (trees,) = [f for f in result.float_nodes if f.name == "trees"]
    assert trees.share == 1.0


def _mlp_with_bias() -> onnx.ModelProto:
    """MatMul + bias Add, which onnxruntime's simplifier fuses into a Gemm named
    ``mm/MatMulAddFusion``, then a second MatMul."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (8, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_an_excluded_layer_name_still_selects_the_layer_onnxruntime_fused_it_into():
    recipe = onnxquant.Recipe().with_overrides(search={"enabled": False}, nodes={"exclude": ("mm",)})
    result = onnxquant.quantize(_mlp_with_bias(), _samples(16), recipe)
    fused = [f for f in result.float_nodes if f.name.startswith("mm/")]
    assert len(fused) == 1 and fused[0].reason == "excluded by --exclude"
    assert result.quantized_nodes == {"MatMul": 1}  # (the Relu after the float Gemm is float too)
    assert not any("matched no node" in w for w in result.warnings)


def test_a_node_pattern_that_matches_nothing_is_a_warning():
    recipe = onnxquant.Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False}, nodes={"exclude": ("*mm*", "op:Conv")})
    result = onnxquant.quantize(_mlp_with_bias(), _samples(16), recipe)
    assert result.quantized_nodes == {"Gemm": 1, "Relu": 1, "MatMul": 1}  # nothing excluded
    unmatched = [w for w in result.warnings if "matched no node" in w]
    assert len(unmatched) == 2 and "'*mm*'" in unmatched[0] and "'op:Conv'" in unmatched[1]


def test_a_pattern_that_selects_only_replaced_nodes_of_the_input_says_so():
    """The bias Add is fused into a Gemm before planning: ``op:Add`` selected a node of the input
    model, so it is not called a mistyped pattern, but it changed nothing and the warning says why."""
    recipe = onnxquant.Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False},
                                               nodes={"exclude": ("op:Add", "op:Conv")})
    result = onnxquant.quantize(_mlp_with_bias(), _samples(16), recipe)
    said = [w for w in result.warnings if w.startswith("node pattern")]
    assert len(said) == 2
    assert said[0].startswith("node pattern 'op:Add' (exclude) matched only nodes of the input model that onnxquant "
                              "replaced")
    assert "'op:Conv' (exclude) matched no node" in said[1]
