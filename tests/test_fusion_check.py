"""The fusion self-check reads onnxruntime's optimized graph: which quantized layers are integer kernels."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

import onnxquant
from models.quirks import feature_samples, sklearn_style_mlp
from onnxquant.fusion_check import check_fusion, quantized_weights, round_trips
from tests.conftest import INTEGER_KERNELS


def test_integer_kernels_are_counted():
    result = onnxquant.quantize(sklearn_style_mlp(), feature_samples(8), INTEGER_KERNELS)
    check = check_fusion(result.model)
    assert (check.quantized_layers, check.integer_layers, check.float_islands) == (2, 2, [])
    assert check.summary() == "2 of 2 quantized layers run as integer kernels"


def test_a_layer_onnxruntime_cannot_fuse_is_named():
    """A Gemm whose bias is float and (1, N) (what skl2onnx writes) stays a float Gemm between
    DequantizeLinear nodes: the check names it."""
    model = onnxquant.quantize(sklearn_style_mlp(), feature_samples(8), INTEGER_KERNELS).model
    layers = quantized_weights(model)
    first = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert first.name in {n for names in layers.values() for n in names}
    bias = numpy_helper.from_array(np.zeros((1, 32), np.float32), "float_bias_1xN")  # 32: the hidden width
    model.graph.initializer.append(bias)
    first.input[2] = "float_bias_1xN"
    check = check_fusion(model)
    assert check.float_islands == [first.name]
    assert (check.quantized_layers, check.integer_layers) == (2, 1)


def test_only_the_layers_asked_about_are_counted():
    model = onnxquant.quantize(sklearn_style_mlp(), feature_samples(8), INTEGER_KERNELS).model
    names = sorted({n for layers in quantized_weights(model).values() for n in layers})
    check = check_fusion(model, only={names[0]})
    assert check.quantized_layers == 1


def test_float_ops_between_quantize_and_dequantize_are_round_trips():
    """DQ -> Reshape -> Sigmoid -> Mul -> Q: each float op (data movement too: onnxruntime would
    have dropped its Q/DQ if it could) is a round trip; shape arithmetic and a float tail that
    reaches no QuantizeLinear are not."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["": 13]>
        g (uint8[1, 4] q) => (float[1, 4] tail, uint8[1, 4] out)
        <float s = {0.1}, uint8 z = {0}> {
            x = DequantizeLinear(q, s, z)
            shape = Shape(x)
            r = Reshape(x, shape)
            g = Sigmoid(r)
            m = Mul(r, g)
            out = QuantizeLinear(m, s, z)
            tail = Softmax(x)
        }
        """)
    assert round_trips(model) == [("Reshape", ""), ("Sigmoid", ""), ("Mul", "")]


def test_kernels_that_quantize_their_own_input_are_not_round_trips():
    """DQ -> Transpose -> DynamicQuantizeLSTM -> Q: the LSTM takes float and quantizes it itself
    (an integer kernel, not float work between integer kernels), and the Transpose feeds it, not
    a QuantizeLinear: nothing to warn about."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["": 13, "com.microsoft": 1]>
        g (uint8[2, 1, 4] q) => (uint8[2, 1, 1, 4] out)
        <float s = {0.1}, uint8 z = {0}, int8[1, 4, 16] w = {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}> {
            x = DequantizeLinear(q, s, z)
            t = Transpose <perm = [0, 1, 2]> (x)
            y = com.microsoft.DynamicQuantizeLSTM <hidden_size = 4> (t, w, w)
            out = QuantizeLinear(y, s, z)
        }
        """)
    assert round_trips(model) == []
