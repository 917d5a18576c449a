"""benchmarks/size_breakdown.py splits a quantized model's bytes into parts that add up to the file."""
from __future__ import annotations

import onnx
from onnx import numpy_helper

import onnxquant
from benchmarks.size_breakdown import breakdown
from models.tiny import image_samples, tiny_cnn
from onnxquant.recipe import recipe_for_target
from tests.test_conv_cost import _cnn, _samples

_NOT_BYTES = {"node and tensor names", "total"}  # names are inside the nodes' bytes


def _parts_add_up(parts: dict[str, int], model: onnx.ModelProto) -> None:
    assert parts["total"] == model.ByteSize() == len(model.SerializeToString())
    assert sum(v for k, v in parts.items() if k not in _NOT_BYTES) == parts["total"]
    assert 0 < parts["node and tensor names"] < parts["nodes"]


def test_a_qdq_model_in_parts():
    recipe = recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False})
    model = onnxquant.quantize(tiny_cnn(), image_samples(4), recipe).model
    parts = breakdown(model)
    _parts_add_up(parts, model)
    int8 = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert parts["integer weights"] > int8 > 0
    assert parts["scales"] > 0 and parts["zero points"] > 0 and parts["metadata"] > 0
    assert parts.get("value_info", 0) == 0  # the written model records no shapes


def test_float_compute_weights_and_scales_are_told_apart():
    recipe = recipe_for_target("cpu-avx2").with_overrides(search={"enabled": False})
    model = onnxquant.quantize(_cnn(8, 3, 24, 96), _samples(24, 96), recipe).model
    assert any(n.op_type == "Cast" for n in model.graph.node)  # Cast(int8) * scale
    parts = breakdown(model)
    _parts_add_up(parts, model)
    int8 = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert parts["integer weights"] > int8 > 0
    assert parts["scales"] > 0 and parts["float initializers"] > 0  # the Mul's scales; the biases
