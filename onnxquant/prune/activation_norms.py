"""The RMS of each layer's input features over the calibration samples (for Wanda scores).

One probed session streams the samples; memory is one sample plus one vector per layer.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from onnxquant.errors import CalibrationDataError
from onnxquant.passes.prepare import default_opset
from onnxquant.prune.weights import PrunableWeight
from onnxquant.recovery.probe import Probe, run_probe


def input_rms(model: onnx.ModelProto, layers: list[PrunableWeight], samples: Iterable[dict[str, np.ndarray]],
              max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Per layer: the root mean square of each input feature (Conv: channel; MatMul/Gemm: last dim)."""
    by_name = {n.name: n for n in model.graph.node}
    opset = default_opset(model)
    probe = Probe("onnxquant_wanda_")
    outputs: dict[str, str] = {}
    for layer in layers:
        x = by_name[layer.node].input[0]
        square = probe.node("Mul", [x, x], "sq")
        if layer.op_type == "Conv":
            rank = len(layer.shape)
            mean = probe.reduce("ReduceMean", square, [0, *range(2, rank)], opset)
        else:
            features = layer.shape[layer.input_axis]
            flat = probe.node("Reshape", [square, probe.constant(np.array([-1, features], np.int64), "shape")])
            mean = probe.reduce("ReduceMean", flat, [0], opset)
        outputs[layer.node] = mean
        probe.outputs.append(mean)
    if not layers:
        return {}
    totals: dict[str, np.ndarray] = {}
    count = 0
    for values in run_probe(model, probe, samples, max_samples):
        for node, out in outputs.items():
            v = values[out].astype(np.float64)
            totals[node] = totals[node] + v if node in totals else v
        count += 1
    if count == 0:
        raise CalibrationDataError("no calibration samples were read (Wanda pruning needs them)")
    return {node: np.sqrt(total / count) for node, total in totals.items()}
