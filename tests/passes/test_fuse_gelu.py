from __future__ import annotations

import numpy as np
import onnx

from models.tiny import attention_samples, tiny_attention
from onnxquant.passes.fuse_gelu import MS_DOMAIN, fuse_gelu
from tests.conftest import run


def test_exact_gelu_becomes_one_op_with_the_same_outputs():
    model = tiny_attention()
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert fuse_gelu(fused.graph, 17) == 1
    fused.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    ops = [n.op_type for n in fused.graph.node]
    assert "Erf" not in ops and ops.count("Gelu") == 1
    assert [n.domain for n in fused.graph.node if n.op_type == "Gelu"] == [MS_DOMAIN]
    onnx.checker.check_model(fused)
    for sample in attention_samples(3):
        np.testing.assert_allclose(run(fused, sample)[0], run(model, sample)[0], rtol=1e-5, atol=1e-5)


def test_standard_gelu_from_opset_20():
    model = tiny_attention()
    assert fuse_gelu(model.graph, 20) == 1
    assert [n.domain for n in model.graph.node if n.op_type == "Gelu"] == [""]


def test_erf_with_other_constants_is_left_alone():
    model = tiny_attention()
    for init in model.graph.initializer:
        if init.name == "half":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array(0.25, np.float32), "half"))
    assert fuse_gelu(model.graph, 17) == 0
    assert "Erf" in [n.op_type for n in model.graph.node]
