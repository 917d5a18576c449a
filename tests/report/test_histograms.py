from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.api import quantize
from onnxquant.report.histograms import (
    activation_histograms,
    activation_ranges,
    weight_histograms,
)


def _dq_model(q: np.ndarray, scale: np.ndarray, axis: int = 0) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), "wz")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis, name="dq"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_histogram_spans_the_chosen_grid_and_skips_dead_channels():
    q = np.zeros((3, 2, 1, 1), np.int8)
    q[0] = [[[100]], [[-127]]]
    q[1] = [[[5]], [[-5]]]  # channel 2 stays all zero: its placeholder scale must not set the range
    scale = np.array([0.01, 0.02, 1.0])
    (hist,) = weight_histograms(_dq_model(q, scale), reduce_range=False)
    assert hist.layer == "conv"
    # widest live channel: 127 steps of 0.02
    assert np.isclose(hist.clip_lo, -127 * 0.02) and np.isclose(hist.clip_hi, 127 * 0.02)
    assert sum(hist.counts) == q.size and hist.clipped == 0.0
    assert "1 all-zero channels" in hist.note


def test_seven_bit_weights_show_the_seven_bit_grid():
    q = np.array([-64, 0, 63, 10], np.int8).reshape(4, 1, 1, 1)
    (hist,) = weight_histograms(_dq_model(q, np.array([0.5]), axis=0), reduce_range=True)
    assert (hist.clip_lo, hist.clip_hi) == (-32.0, 31.5)


def test_activation_ranges_match_the_quantized_model(cnn_path: Path, npz_dir: Path):
    result = quantize(cnn_path, npz_dir, diagnostics=True)
    ranges = activation_ranges(result.model)
    assert ranges and result.stats is not None and result.reference is not None
    producers = {o: n.name for n in result.reference.graph.node for o in n.output}
    hists = activation_histograms(result.stats, result.model, producers)
    assert {h.tensor for h in hists} <= set(ranges)
    for h in hists:
        lo, hi, _ = ranges[h.tensor]
        assert (h.clip_lo, h.clip_hi) == (lo, hi)
        stats = result.stats.tensors[h.tensor]
        assert h.lo <= max(stats.min, lo) and h.hi >= min(stats.max, hi)
        assert sum(h.counts) > 0 and 0.0 <= h.clipped < 0.01  # minmax ranges clip (next to) nothing
