import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxquant.recovery.patch_means import ConvGeometry, conv_mean_output, patch_means, tap_selection
from tests.conftest import run


def _extractor(channels: int, kernel: tuple[int, ...], shape: tuple[int, ...], **attrs) -> onnx.ModelProto:
    """A depthwise Conv whose one-hot kernels copy each tap's input to its own output channel:
    onnxruntime's own im2col, for the patch means to be checked against."""
    taps = int(np.prod(kernel))
    w = np.zeros((channels * taps, 1, *kernel), np.float32)
    for c in range(channels):
        for t in range(taps):
            w[c * taps + t, 0].reshape(-1)[t] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=channels, **attrs)], "extract",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = [
    ((3, 3), {"pads": [1, 1, 1, 1]}, (1, 3, 9, 8)),
    ((3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, (2, 2, 9, 10)),
    ((5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2]}, (1, 2, 7, 7)),
    ((3, 2), {"pads": [0, 1, 2, 0], "dilations": [2, 1]}, (1, 2, 8, 6)),
    ((3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 2, 8, 7)),
    ((4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 1, 8, 9)),
    ((2, 2), {"auto_pad": "VALID", "strides": [3, 3]}, (1, 2, 8, 8)),
    ((1, 1), {"strides": [2, 2]}, (1, 3, 7, 6)),
    ((3,), {"pads": [1, 1], "strides": [2]}, (2, 3, 11)),
]


@pytest.mark.parametrize("kernel,attrs,shape", CASES)
def test_patch_means_equal_onnxruntime_im2col(kernel, attrs, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    channels = shape[1]
    (y,) = run(_extractor(channels, kernel, shape, **attrs), {"x": x})
    expected = y.mean(axis=(0, *range(2, y.ndim)), dtype=np.float64).reshape(channels, *kernel)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    got = patch_means(x, ConvGeometry.of(node, (1, channels, *kernel)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_conv_mean_output_is_the_mean_of_a_grouped_conv():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    w = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    (y,) = run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})
    got = conv_mean_output(w, patch_means(x, ConvGeometry.of(node, w.shape)), group=2)
    np.testing.assert_allclose(got, y.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,attrs,shape", [c for c in CASES if len(c[0]) == 2])
def test_tap_selection_matrices_give_the_patch_sums(kernel, attrs, shape):
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    geometry = ConvGeometry.of(helper.make_node("Conv", ["x", "w"], ["y"], **attrs), (1, shape[1], *kernel))
    rows, cols = tap_selection(geometry, 0, shape[2]), tap_selection(geometry, 1, shape[3])
    positions = geometry.axis(0, shape[2])[0] * geometry.axis(1, shape[3])[0]
    sums = np.einsum("kh,nchw,lw->ckl", rows.astype(np.float64), x, cols.astype(np.float64))
    np.testing.assert_allclose(sums / (shape[0] * positions), patch_means(x, geometry), rtol=1e-6, atol=1e-9)
