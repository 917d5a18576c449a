"""The shape-based estimate says when a quantized CNN's convolutions run slower as int8 than in
fp32 on a CPU kind (depthwise and few-channel layers on x86 without VNNI), and quantize warns."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.conv_cost import COSTS, ConvShape, estimate, quantized_conv_shapes
from onnxquant.recipe import recipe_for_target


def _cnn(channels: int, depthwise: int, height: int, width: int, seed: int = 0) -> onnx.ModelProto:
    """A stem Conv to ``channels``, then ``depthwise`` blocks (depthwise 3x3 + pointwise 1x1, ReLU
    after each) on a free-batch input of 3 x height x width."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, out: str, cin: int, cout: int, k: int, group: int) -> None:
        w, b = f"{out}_w", f"{out}_b"
        inits.extend([numpy_helper.from_array(rng.normal(0, 0.3, (cout, cin // group, k, k)).astype(np.float32), w),
                      numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), b)])
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{out}_c"], group=group, kernel_shape=[k, k],
                                      pads=[k // 2] * 4, name=out))
        nodes.append(helper.make_node("Relu", [f"{out}_c"], [out], name=f"{out}_relu"))

    conv("x", "stem", 3, channels, 3, 1)
    x = "stem"
    for i in range(depthwise):
        conv(x, f"dw{i}", channels, channels, 3, channels)
        conv(f"dw{i}", f"pw{i}", channels, channels, 1, 1)
        x = f"pw{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="pool"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(height: int, width: int, count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (1, 3, height, width)).astype(np.float32)} for _ in range(count)]


def _quantize(model: onnx.ModelProto, height: int, width: int, target: str) -> onnxquant.QuantizeResult:
    """The integer model, kept although slower (``integer_compute``; see test_float_compute.py)."""
    recipe = recipe_for_target(target).with_overrides(search={"enabled": False}, quantization={"integer_compute": True})
    return onnxquant.quantize(model, _samples(height, width), recipe)


def test_shapes_of_the_quantized_convs_for_the_sample_shape():
    result = _quantize(_cnn(8, 2, 24, 96), 24, 96, "cpu-avx2")
    layers = {layer.name: layer for layer in quantized_conv_shapes(result.model, {"x": (1, 3, 24, 96)})}
    assert sorted(layers) == ["dw0", "dw1", "pw0", "pw1", "stem"]
    assert (layers["dw0"].pixels, layers["dw0"].outputs, layers["dw0"].macs, layers["dw0"].depthwise) == \
        (24 * 96, 8 * 24 * 96, 8 * 24 * 96 * 9, True)
    assert (layers["pw1"].macs, layers["pw1"].depthwise, layers["pw1"].kernel_area) == (8 * 24 * 96 * 8, False, 1)
    assert layers["stem"].kernel_area == 9


def test_a_depthwise_few_channel_cnn_is_called_slower_than_fp32_on_x86_without_vnni():
    """Eight channels, depthwise blocks (the PP-OCR classifier's first stages): every layer fuses,
    and still the int8 model is slower; the summary says so in one line."""
    result = _quantize(_cnn(8, 3, 24, 96), 24, 96, "cpu-avx2")
    assert result.fusion is not None and result.fusion.float_islands == []
    found = estimate(result.model, {"x": (1, 3, 24, 96)}, "avx2")
    assert found is not None and found.ratio > 1.0 and found.layers == 7
    assert set(found.slower) >= {"dw0", "dw1", "dw2"}
    slower = [w for w in result.warnings if "slower than fp32 here by construction" in w]
    assert len(slower) == 1 and f"{found.ratio:.2f}x" in slower[0]


def test_a_wide_cnn_is_not_called_slower():
    """96 channels on 28 x 28 (EfficientNet-like): the pointwise layers win more than the stem
    and the depthwise layers lose."""
    result = _quantize(_cnn(96, 3, 28, 28), 28, 28, "cpu-avx2")
    found = estimate(result.model, {"x": (1, 3, 28, 28)}, "avx2")
    assert found is not None and found.ratio < 1.0
    assert not any("by construction" in w for w in result.warnings)


@pytest.mark.parametrize("kind", ["avx2", "vnni"])
def test_kinds_of_conv_cost_what_the_profiled_models_showed(kind: str):
    """Per layer, from the fitted figures (benchmarks/conv_profile.py measured them inside real
    models): a stem on 3 input channels and a depthwise layer with few channels cost more as
    int8, a wide pointwise layer less; a depthwise 1x1 Conv (a hard-swish gate in the integer
    graph) costs fp32 only a per-channel scale, so it always counts against int8."""
    fp32, int8 = COSTS[kind]
    stem = ConvShape("stem", 2304, 2304 * 8, 2304 * 8 * 27, depthwise=False, kernel_area=9)
    thin_depthwise = ConvShape("dw", 2304, 2304 * 16, 2304 * 16 * 9, depthwise=True, kernel_area=9)
    wide_pointwise = ConvShape("pw", 784, 784 * 240, 784 * 240 * 40, depthwise=False, kernel_area=1)
    gate = ConvShape("gate", 288, 288 * 200, 288 * 200, depthwise=True, kernel_area=1)
    assert int8.nanoseconds(stem) > fp32.nanoseconds(stem)
    assert int8.nanoseconds(thin_depthwise) > fp32.nanoseconds(thin_depthwise)
    assert int8.nanoseconds(wide_pointwise) < 0.8 * fp32.nanoseconds(wide_pointwise)
    assert fp32.nanoseconds(gate) < 0.5 * int8.nanoseconds(gate)
    # time grows with the batch (pixels), except the per-call part
    batch8 = ConvShape("dw8", 8 * 2304, 8 * 2304 * 16, 8 * 2304 * 16 * 9, depthwise=True, kernel_area=9)
    assert int8.nanoseconds(thin_depthwise) < int8.nanoseconds(batch8) < 8 * int8.nanoseconds(thin_depthwise)


def test_no_estimate_without_figures_for_the_cpu_kind():
    """ARM64 has no measured figures: nothing is claimed there."""
    result = _quantize(_cnn(8, 3, 24, 96), 24, 96, "cpu-arm64")
    assert estimate(result.model, {"x": (1, 3, 24, 96)}, "arm64") is None
    assert not any("by construction" in w for w in result.warnings)


def test_with_vnni_a_thin_cnn_is_still_slower_and_a_wide_one_faster():
    """With VNNI the mobile classifiers' Convs measured 1.37-1.75x fp32 as int8, EfficientNet-Lite0's
    0.53x: the thin depthwise network is estimated slower, the wide one faster."""
    thin = _quantize(_cnn(8, 3, 24, 96), 24, 96, "cpu-vnni")
    found = estimate(thin.model, {"x": (1, 3, 24, 96)}, "vnni")
    assert found is not None and found.ratio > 1.0 and found.layers == 7
    wide = _quantize(_cnn(96, 3, 28, 28), 28, 28, "cpu-vnni")
    found = estimate(wide.model, {"x": (1, 3, 28, 28)}, "vnni")
    assert found is not None and found.ratio < 1.0


