import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.tiny import image_samples, tiny_cnn
from onnxquant.passes.fold_affine import fold_affine_into_conv
from onnxquant.passes.fold_constants import fold_constant_nodes
from onnxquant.passes.fuse_hardswish import fuse_hardswish
from onnxquant.passes.prepare import default_opset, prepare_model
from tests.conftest import run

FEED = image_samples(1)[0]


def test_constant_node_weights_become_initializers():
    model = tiny_cnn(constant_weights=True)
    assert len(model.graph.initializer) == 0
    folded = fold_constant_nodes(model)
    assert folded == 10 and not any(n.op_type == "Constant" for n in model.graph.node)
    np.testing.assert_allclose(run(model, FEED)[0], run(tiny_cnn(), FEED)[0], rtol=1e-6)


def test_prepare_never_touches_its_input():
    model = tiny_cnn(constant_weights=True)
    before = model.SerializeToString()
    prepare_model(model)
    assert model.SerializeToString() == before


def test_opset_11_is_upgraded_to_13_and_stays_equivalent():
    old = tiny_cnn(opset=11)
    prepared, report = prepare_model(old)
    assert default_opset(prepared) == 13 and report.opset_from == 11
    np.testing.assert_allclose(run(prepared, FEED)[0], run(old, FEED)[0], rtol=1e-5, atol=1e-6)


def _conv_with_affines(pads: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(np.float32(1.7).reshape(()), "pre_s"),
        numpy_helper.from_array(rng.normal(size=(1, 3, 1, 1)).astype(np.float32), "pre_b"),
        numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "post_s"),
        numpy_helper.from_array(np.float32(0.3).reshape(()), "post_b"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "pre_s"], ["a"]),
        helper.make_node("Add", ["a", "pre_b"], ["a2"]),
        helper.make_node("Conv", ["a2", "w", "b"], ["c"], pads=[pads] * 4),
        helper.make_node("Mul", ["c", "post_s"], ["c2"]),
        helper.make_node("Add", ["post_b", "c2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_affines_fold_into_conv_exactly():
    feed = {"x": np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)}
    # With padding the pre-conv Add cannot fold (the border would see it), so the Mul before it
    # is not next to the Conv either: both stay. The post-conv Mul/Add always fold.
    for pads, left in [(0, 0), (1, 2)]:
        model = _conv_with_affines(pads)
        want = run(model, feed, optimize=False)[0]
        fold_affine_into_conv(model)
        assert sum(n.op_type in ("Mul", "Add") for n in model.graph.node) == left
        np.testing.assert_allclose(run(model, feed, optimize=False)[0], want, rtol=1e-4, atol=1e-4)


def _conv_transpose_head(group: int) -> onnx.ModelProto:
    """PP-OCR det's head: ConvTranspose -> Add (bias) -> BatchNormalization -> Relu -> ConvTranspose
    -> Mul -> Sigmoid; the first ConvTranspose has no bias input, the second is grouped when asked."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
        value = rng.normal(size=shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(value) + 0.1 if positive else value, name)

    inits = [init("w1", 6, 4, 2, 2), init("bias1", 1, 4, 1, 1), init("gamma", 4), init("beta", 4), init("mean", 4),
             init("var", 4, positive=True), init("w2", 4, 4 // group, 2, 2), init("b2", 4), init("s2", 1, 4, 1, 1)]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1"], ["t1"], strides=[2, 2]),
        helper.make_node("Add", ["t1", "bias1"], ["t2"]),
        helper.make_node("BatchNormalization", ["t2", "gamma", "beta", "mean", "var"], ["t3"], epsilon=1e-3),
        helper.make_node("Relu", ["t3"], ["t4"]),
        helper.make_node("ConvTranspose", ["t4", "w2", "b2"], ["t5"], strides=[2, 2], group=group),
        helper.make_node("Mul", ["t5", "s2"], ["t6"]),
        helper.make_node("Sigmoid", ["t6"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_bias_batchnorm_and_scale_fold_into_conv_transpose_exactly():
    feed = {"x": np.random.default_rng(1).normal(size=(1, 6, 5, 7)).astype(np.float32)}
    for group in (1, 2):
        model = _conv_transpose_head(group)
        want = run(model, feed, optimize=False)[0]
        assert fold_affine_into_conv(model) == 3
        assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Relu", "ConvTranspose", "Sigmoid"]
        np.testing.assert_allclose(run(model, feed, optimize=False)[0], want, rtol=1e-5, atol=1e-6)


def test_nothing_before_a_conv_transpose_folds():
    """A constant before a ConvTranspose is not folded (only its outputs are handled)."""
    model = _conv_transpose_head(1)
    scale = numpy_helper.from_array(np.full((1, 6, 1, 1), 1.5, np.float32), "pre")
    model.graph.initializer.append(scale)
    model.graph.node.insert(0, helper.make_node("Mul", ["x", "pre"], ["xs"]))
    model.graph.node[1].input[0] = "xs"
    fold_affine_into_conv(model)
    assert [n.op_type for n in model.graph.node][:2] == ["Mul", "ConvTranspose"]


def test_hardswish_pattern_fuses_exactly():
    inits = [numpy_helper.from_array(np.float32(v).reshape(()), n) for n, v in [("three", 3), ("zero", 0), ("six", 6)]]
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], inits)
    feed = {"x": np.linspace(-8, 8, 64, dtype=np.float32)}
    for opset, ops in [(13, ["HardSigmoid", "Mul"]), (14, ["HardSwish"])]:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        want = run(model, feed)[0]
        assert fuse_hardswish(model, opset) == 1
        assert [n.op_type for n in model.graph.node] == ops
        np.testing.assert_allclose(run(model, feed)[0], want, rtol=1e-5, atol=1e-6)


def test_many_hardswish_patterns_in_one_graph():
    """Every pattern fused, nothing else dropped (nodes are tracked by position, not id())."""
    inits = [numpy_helper.from_array(np.float32(v).reshape(()), n) for n, v in [("three", 3), ("zero", 0), ("six", 6)]]
    nodes, x = [], "x"
    for k in range(12):
        nodes += [
            helper.make_node("Add", [x, "three"], [f"a{k}"]),
            helper.make_node("Clip", [f"a{k}", "zero", "six"], [f"c{k}"]),
            helper.make_node("Mul", [x, f"c{k}"], [f"m{k}"]),
            helper.make_node("Div", [f"m{k}", "six"], [f"h{k}"]),
            helper.make_node("Neg", [f"h{k}"], [f"n{k}"]),
        ]
        x = f"n{k}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feed = {"x": np.linspace(-8, 8, 32, dtype=np.float32)}
    want = run(model, feed)[0]
    assert fuse_hardswish(model, 13) == 12
    assert [n.op_type for n in model.graph.node].count("Neg") == 12 and len(model.graph.node) == 36
    np.testing.assert_allclose(run(model, feed)[0], want, rtol=1e-5, atol=1e-6)


def _old_export() -> onnx.ModelProto:
    """An opset 7 / IR 3 export: every initializer is also listed as a graph input."""
    model = tiny_cnn(opset=7)
    model.ir_version = 3
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return model


def test_ir3_exports_with_initializers_as_inputs_are_prepared():
    model = _old_export()
    prepared, report = prepare_model(model)
    assert default_opset(prepared) >= 13 and prepared.ir_version >= 4
    assert [i.name for i in prepared.graph.input] == ["x"]
    np.testing.assert_allclose(run(prepared, FEED)[0], run(tiny_cnn(), FEED)[0], rtol=1e-5, atol=1e-6)


def test_ir3_export_quantizes_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from onnxquant.cli import main
    from tests.conftest import write_npz

    onnx.save(_old_export(), str(tmp_path / "old.onnx"))
    calib = write_npz(tmp_path / "calib", image_samples(3))
    for command in (["quantize"], ["prune", "--sparsity", "0.3"]):
        out = tmp_path / f"{command[0]}.onnx"
        result = CliRunner().invoke(main, [command[0], str(tmp_path / "old.onnx"), "-o", str(out),
                                           "--calib-data", str(calib), *command[1:]])
        assert result.exit_code == 0, result.output
        assert np.all(np.isfinite(run(out, FEED)[0]))


def test_sparse_storage_output_can_be_quantized_and_pruned_again(tmp_path):
    """onnxquant's own ``prune --sparse-storage`` output (sparse initializers) is a valid input."""
    from click.testing import CliRunner

    from models.tiny import tiny_mlp
    from onnxquant.cli import main
    from tests.conftest import write_npz

    rng = np.random.default_rng(0)
    calib = write_npz(tmp_path / "calib", [{"x": rng.normal(0, 1, (1, 4, 8)).astype(np.float32)} for _ in range(4)])
    onnx.save(tiny_mlp(hidden=256), str(tmp_path / "m.onnx"))
    sparse = tmp_path / "sparse.onnx"
    result = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "-o", str(sparse), "--sparsity", "0.9",
                                       "--sparse-storage", "--calib-data", str(calib)])
    assert result.exit_code == 0, result.output
    assert len(onnx.load(str(sparse)).graph.sparse_initializer) >= 1
    feed = {"x": rng.normal(0, 1, (1, 4, 8)).astype(np.float32)}
    for command in (["quantize"], ["prune", "--sparsity", "0.95"]):
        out = tmp_path / f"again-{command[0]}.onnx"
        result = CliRunner().invoke(main, [command[0], str(sparse), "-o", str(out), "--calib-data", str(calib),
                                           *command[1:]])
        assert result.exit_code == 0, (command, result.output)
        assert np.all(np.isfinite(run(out, feed)[0]))


def test_densified_sparse_initializers_equal_the_dense_ones():
    from onnxquant.passes.prepare import densify_sparse_initializers

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((6, 5)) < 0.7, 0, rng.normal(0, 1, (6, 5))).astype(np.float32)
    flat = np.flatnonzero(dense)
    for indices in (flat, np.stack(np.unravel_index(flat, dense.shape), axis=1)):
        model = onnx.ModelProto()
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(dense.reshape(-1)[flat], "w"), numpy_helper.from_array(indices.astype(np.int64), "i"),
            list(dense.shape)))
        assert densify_sparse_initializers(model) == 1
        np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), dense)
        assert model.graph.initializer[0].name == "w" and not model.graph.sparse_initializer


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_a_fold_keeps_what_an_if_body_reads(op):
    """A Mul after a Conv/ConvTranspose folds into its weights, but an initializer only an If branch
    reads (``outer_only``) stays, and the model still loads."""
    import onnxruntime as ort

    w = np.random.default_rng(0).normal(size=(4, 4, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(2.0).reshape(()), "c"),
             numpy_helper.from_array(np.float32(5.0).reshape(()), "outer_only")]
    then = helper.make_graph([helper.make_node("Add", ["y", "outer_only"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["y"], ["r2"])], "else", [],
                              [helper.make_tensor_value_info("r2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node(op, ["x", "w"], ["t"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["t", "c"], ["y"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    fold_affine_into_conv(model)
    assert "outer_only" in {i.name for i in model.graph.initializer}
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
