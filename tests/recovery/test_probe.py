import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxquant.recovery.probe import Probe, probe_bytes, run_probe


def _chain() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Neg", ["a"], ["b"], name="second"),
             helper.make_node("Exp", ["b"], ["y"], name="third")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_probe_nodes_follow_what_they_read_and_the_model_is_left_as_it_was():
    model = _chain()
    before = model.SerializeToString(deterministic=True)
    probe = Probe(prefix="_p")
    mean = probe.reduce("ReduceMean", "a", [0, 1], 17)
    doubled = probe.node("Add", [mean, mean])
    probe.outputs += [mean, doubled, probe.node("Abs", ["x"])]
    probe.outputs.append(probe.node("Sqrt", ["y"]))  # (reads the last node: the whole graph is needed)
    order = [n.op_type for n in onnx.load_from_string(probe_bytes(model, probe)).graph.node]
    assert order == ["Abs", "Relu", "ReduceMean", "Add", "Neg", "Exp", "Sqrt"]
    assert model.SerializeToString(deterministic=True) == before
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    (values,) = run_probe(model, probe, [{"x": x}])
    np.testing.assert_allclose(values[mean], np.maximum(x, 0).mean())
    np.testing.assert_allclose(values[doubled], 2 * np.maximum(x, 0).mean())


def test_a_probe_runs_only_the_nodes_its_outputs_depend_on_and_held_nodes_stay_the_models():
    """onnxruntime runs every node whatever is fetched: a probe of the first node is serialized
    without the rest (nor their weights, nor the model's own outputs). The model's nodes are not
    moved meanwhile: a caller holding one still edits the model through it."""
    model = _chain()
    model.graph.node[2].input[0] = "w_b"
    model.graph.node.insert(2, helper.make_node("Mul", ["b", "w"], ["w_b"], name="scaled"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full((2, 3), 2, np.float32), "w"))
    held = model.graph.node[0]
    probe = Probe(prefix="_p")
    probe.outputs.append(probe.reduce("ReduceMean", "a", [0, 1], 17))
    cut = onnx.load_from_string(probe_bytes(model, probe))
    assert [n.op_type for n in cut.graph.node] == ["Relu", "ReduceMean"]
    assert not cut.graph.initializer and [o.name for o in cut.graph.output] == probe.outputs
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    (values,) = run_probe(model, probe, [{"x": x}])
    np.testing.assert_allclose(values[probe.outputs[0]], np.maximum(x, 0).mean())
    held.op_type = "Abs"
    assert model.graph.node[0].op_type == "Abs" and len(model.graph.node) == 4 and len(model.graph.initializer) == 1
