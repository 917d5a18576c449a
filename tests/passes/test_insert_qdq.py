"""The QDQ rewrite stores no zero point that DequantizeLinear implies (size), and the layers still
become onnxruntime's integer kernels with the same outputs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.fusion_check import check_fusion
from tests.conftest import INTEGER_KERNELS


def _conv_gemm_matmul() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["h"], transB=1, name="gemm"),
        helper.make_node("MatMul", ["h", "mw"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [init("cw", 8, 3, 3, 3), init("cb", 8), init("gw", 16, 8), init("gb", 16),
         init("mw", 16, 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(count: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def _weight_dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Layer name -> the DequantizeLinear of its weight (input 1)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: producer[n.input[1]] for n in model.graph.node
            if n.name in ("conv", "gemm", "matmul")}


def _with_zero_points(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every omitted weight zero point written out as explicit zeros."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for dq in _weight_dequantizers(out).values():
        if len(dq.input) == 2:
            scale = numpy_helper.to_array(inits[dq.input[1]])
            zero = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{dq.input[0]}_explicit_zero")
            out.graph.initializer.append(zero)
            dq.input.append(zero.name)
    return out


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_symmetric_int8_weights_store_no_zero_point_where_onnxruntime_fuses_without_one():
    recipe = onnxquant.Recipe().with_overrides(search={"enabled": False})
    model = onnxquant.quantize(_conv_gemm_matmul(), _samples(), recipe).model
    dq = _weight_dequantizers(model)
    assert set(dq) == {"conv", "gemm", "matmul"}
    assert [len(dq[name].input) for name in ("conv", "matmul")] == [2, 2]
    assert len(dq["gemm"].input) == 3  # onnxruntime's Gemm fusion needs the zero point written
    check = check_fusion(model)
    assert check.float_islands == []
    assert check.integer_layers == check.quantized_layers == 3
    feed = _samples(1)[0]
    np.testing.assert_array_equal(_run(model, feed), _run(_with_zero_points(model), feed))


def test_uint8_weights_keep_their_zero_point():
    """Symmetric uint8 weights sit around 128: their zero point is not DequantizeLinear's default."""
    recipe = onnxquant.Recipe().with_overrides(search={"enabled": False}, quantization={"weight_type": "uint8"})
    model = onnxquant.quantize(_conv_gemm_matmul(), _samples(), recipe).model
    assert all(len(dq.input) == 3 for dq in _weight_dequantizers(model).values())


def test_per_tensor_weights_get_one_bias_scale():
    """A per-tensor weight's bias scale (input scale x weight scale) is one number: stored once, not
    repeated per channel, and the layers still fuse with the same outputs."""
    recipe = onnxquant.Recipe().with_overrides(search={"enabled": False}, quantization={"per_channel": False})
    model = onnxquant.quantize(_conv_gemm_matmul(), _samples(), recipe).model
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.name == "conv")
    bias_dq = producer[conv.input[2]]
    assert list(inits[bias_dq.input[1]].dims) == [] and not any(a.name == "axis" for a in bias_dq.attribute)
    check = check_fusion(model)
    assert check.float_islands == [] and check.integer_layers == 3
    repeated = onnx.ModelProto()
    repeated.CopyFrom(model)
    scale = next(i for i in repeated.graph.initializer if i.name == bias_dq.input[1])
    value = numpy_helper.to_array(scale)
    scale.CopyFrom(numpy_helper.from_array(np.full(8, value, np.float32), scale.name))  # 8: the Conv's channels
    next(n for n in repeated.graph.node if n.name == bias_dq.name).attribute.append(helper.make_attribute("axis", 0))
    feed = _samples(1)[0]
    np.testing.assert_array_equal(_run(model, feed), _run(repeated, feed))


def _unrolled_rnn(steps: int = 6, width: int = 32, hidden: int = 24) -> onnx.ModelProto:
    """An RNN cell traced step by step (what a PyTorch export of a Python loop over an LSTMCell
    writes): every step's two Gemms read the same two weight matrices."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (hidden, width)).astype(np.float32), "w_in"),
             numpy_helper.from_array(rng.normal(0, 0.3, (hidden, hidden)).astype(np.float32), "w_rec"),
             numpy_helper.from_array(rng.normal(0, 0.1, hidden).astype(np.float32), "b_in"),
             numpy_helper.from_array(np.zeros((1, hidden), np.float32), "h_start"),
             numpy_helper.from_array(np.ones(1, np.int64), "one")]
    nodes = [helper.make_node("Split", ["x"], [f"x{t}_" for t in range(steps)], axis=1, num_outputs=steps, name="split")]
    h = "h_start"
    for t in range(steps):
        nodes += [
            helper.make_node("Squeeze", [f"x{t}_", "one"], [f"x{t}"], name=f"squeeze{t}"),
            helper.make_node("Gemm", [f"x{t}", "w_in", "b_in"], [f"a{t}"], transB=1, name=f"gemm_in{t}"),
            helper.make_node("Gemm", [h, "w_rec"], [f"r{t}"], transB=1, name=f"gemm_rec{t}"),
            helper.make_node("Add", [f"a{t}", f"r{t}"], [f"s{t}"], name=f"add{t}"),
            helper.make_node("Relu", [f"s{t}"], [f"h{t}"], name=f"relu{t}"),
        ]
        h = f"h{t}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, width])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_weight_read_by_every_time_step_is_stored_once():
    """An unrolled RNN's Gemms read 2 matrices: the int8 model stores 2 (not one copy per Gemm, which
    made captcha-whisperer's CRNN 3.6x *larger* than fp32), and every Gemm still fuses."""
    model = _unrolled_rnn()
    rng = np.random.default_rng(4)
    samples = [{"x": rng.normal(0, 1, (1, 6, 32)).astype(np.float32)} for _ in range(16)]
    result = onnxquant.quantize(model, samples, INTEGER_KERNELS)
    int8_matrices = sorted(tuple(i.dims) for i in result.model.graph.initializer
                           if i.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(i.dims) == 2)
    assert int8_matrices == [(24, 24), (24, 32)]
    check = check_fusion(result.model)
    gemms = sum(n.op_type == "Gemm" for n in result.model.graph.node)  # the first step's h0 Gemm folds away
    assert gemms >= 11 and (check.quantized_layers, check.integer_layers) == (gemms, gemms)
    ref, got = _run(model, samples[0]), _run(result.model, samples[0])
    assert np.dot(ref.ravel(), got.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.99
