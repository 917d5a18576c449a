"""When the recipe search may try float compute on int8 weights: the Convs' multiply-adds and
their int8/fp32 estimate, from models built in code."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxquant.conv_cost import ConvEstimate
from onnxquant.search.compute import MIN_CONV_MAC_SHARE, conv_mac_share, float_compute_costs_no_speed


def _conv_then_matmul(classes: int) -> onnx.ModelProto:
    """Conv 3 -> 4 (3x3, padded) on 8 x 8, flattened into a MatMul to ``classes``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 256], np.int64), "flat"),
             numpy_helper.from_array(rng.normal(0, 0.1, (256, classes)).astype(np.float32), "fc_w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4, name="conv"),
             helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc_w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_conv_share_counts_each_layers_multiply_adds_not_its_weights():
    model = _conv_then_matmul(100)
    conv, fc = 8 * 8 * 4 * 27, 256 * 100  # the MatMul holds 25600 weights against the Conv's 108
    share = conv_mac_share(model, {"x": (1, 3, 8, 8)}, {"conv", "fc"})
    assert share is not None and abs(share - conv / (conv + fc)) < 1e-12
    assert conv_mac_share(model, {"x": (1, 3, 8, 8)}, {"conv"}) == 1.0  # only planned layers count
    assert conv_mac_share(model, {"x": (1, 3, 8, 8)}, set()) is None


def test_float_compute_costs_no_speed_only_where_int8_convs_are_no_faster_and_do_most_of_the_work():
    slower = ConvEstimate(layers=4, fp32_us=100.0, int8_us=101.0, slower=("stem",))
    faster = ConvEstimate(layers=4, fp32_us=100.0, int8_us=70.0, slower=())
    assert float_compute_costs_no_speed(slower, 0.97)
    assert not float_compute_costs_no_speed(faster, 0.97)
    assert not float_compute_costs_no_speed(slower, MIN_CONV_MAC_SHARE / 2)
    assert not float_compute_costs_no_speed(slower, None)
    assert not float_compute_costs_no_speed(None, 1.0)
