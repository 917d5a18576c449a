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
    order = [n.op_type for n in onnx.load_from_string(probe_bytes(model, probe)).graph.node]
    assert order == ["Abs", "Relu", "ReduceMean", "Add", "Neg", "Exp"]
    assert model.SerializeToString(deterministic=True) == before
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    (values,) = run_probe(model, probe, [{"x": x}])
    np.testing.assert_allclose(values[mean], np.maximum(x, 0).mean())
    np.testing.assert_allclose(values[doubled], 2 * np.maximum(x, 0).mean())
