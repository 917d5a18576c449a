"""Empirical bias correction: cancel the mean shift int8 adds to each layer's output channels.

Per quantized Conv/Gemm with a bias (or MatMul followed by a float Add of a constant bias), the probe runs a fake-quantized copy of the layer next to
the float one, both fed the float input, and averages their difference per output channel over
the calibration samples. That mean is the layer's own systematic error (rounding of weights
and input); adding it to the bias removes it. Depthwise convolutions, whose few weights per
channel round badly, gain the most. Feeding both copies the float input keeps each layer's
correction its own, so corrections do not compound along the network (NNCF's "fast" variant).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import serialize, tensor_array
from onnxquant.passes.node_index import NodeIndex
from onnxquant.passes.prepare import default_opset
from onnxquant.planner import QuantPlan, refresh_bias_params
from onnxquant.qparams import QParams, dequantize
from onnxquant.recovery.probe import Probe, run_probe

CORRECTABLE = {"Conv", "ConvTranspose", "Gemm"}


def _matmul_biases(index: NodeIndex, plan: QuantPlan, by_name: dict[str, onnx.NodeProto]) -> dict[str, str]:
    """MatMul node -> the constant of the float ``Add`` right after it (how transformers
    export a Linear's bias), when that Add is the MatMul's only reader and owns the constant."""
    inits = index.inits
    found = {}
    for (name, w) in plan.selection.weights:
        node = by_name[name]
        k = index.only_reader(node.output[0], "Add") if node.op_type == "MatMul" else None
        if k is None:
            continue
        add = index.nodes[k]
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if (bias in inits and len(inits[bias].dims) == 1 and len(inits[w].dims) == 2
                and inits[bias].dims[0] == inits[w].dims[1] and index.uses(bias) == 1):
            found[name] = bias
    return found


def _layer_probe(probe: Probe, node: onnx.NodeProto, plan: QuantPlan, weight: np.ndarray, w: str, opset: int) -> str:
    x = node.input[0]
    x_dq = probe.fake_quant(x, plan.activations[x], opset)
    w_fq = probe.constant(dequantize(plan.quantized_weight((node.name, w), weight), plan.weights[(node.name, w)]), "wfq")
    shadow = onnx.NodeProto()
    shadow.CopyFrom(node)
    del shadow.input[:2]
    shadow.input[0:0] = [x_dq, w_fq]
    shadow.output[:] = [probe.name("shadow")]
    shadow.name = shadow.output[0]
    probe.nodes.append(shadow)
    diff = probe.node("Sub", [node.output[0], shadow.output[0]], "diff")
    if node.op_type == "MatMul":  # channels last, any rank: flatten the rest away
        flat = probe.node("Reshape", [diff, probe.constant(np.array([-1, weight.shape[1]], np.int64), "shape")])
        out = probe.reduce("ReduceMean", flat, [0], opset)
    else:
        rank = 2 if node.op_type == "Gemm" else weight.ndim
        out = probe.reduce("ReduceMean", diff, [0, *range(2, rank)], opset)
    probe.outputs.append(out)
    return out


@dataclass
class MeasuredShifts:
    """Per-layer sums of the float-minus-fake-quantized output difference already measured, by
    everything they depend on: the model's bytes (float graph, weights, biases), the layer, the
    quantization params of its input and weight, and the samples. A recipe search re-plans one
    calibrated model many times; a layer whose params a trial leaves as they were is not probed
    again (every probe output is computed on its own, so the sums are the same bits)."""

    source: Any = None  # the calibration data the sums were taken over (compared by identity)
    context: str = ""  # and what else fits the samples to the model (preprocessing, sample cap)
    sums: dict[tuple, tuple[np.ndarray, int]] = field(default_factory=dict)  # key -> (sum, samples)

    def over(self, source: Any, context: str) -> MeasuredShifts:
        """This cache, emptied first when the samples are not those its sums were taken over."""
        if source is not self.source or context != self.context:
            self.source, self.context = source, context
            self.sums.clear()
        return self


def _params_key(params: QParams) -> tuple:
    return (params.dtype, params.axis, np.asarray(params.scale).tobytes(), np.asarray(params.zero_point).tobytes(),
            np.asarray(params.zero_point).dtype.str)


def correct_biases(
    model: onnx.ModelProto,
    plan: QuantPlan,
    samples: Iterable[dict[str, np.ndarray]],
    max_samples: int | None = None,
    measured: MeasuredShifts | None = None,
) -> int:
    """Shift the biases of ``model`` (in place) and refresh their int32 params in ``plan``.

    ``measured``: sums measured before for this model and these samples, used where they fit
    (and the new ones added). Returns how many biases changed.
    """
    index = NodeIndex(model.graph)
    inits = index.inits
    by_name = {n.name: n for n in index.nodes}
    opset = default_opset(model)
    model_key = hashlib.sha256(serialize(model)).hexdigest() if measured is not None else ""
    probe = Probe(prefix="_oq_bc")
    targets: list[tuple[tuple, str, str]] = []  # (measurement key, node, bias), in correction order
    probed: dict[str, tuple] = {}  # probe output -> measurement key
    float_adds = set()
    weight_of = {name: w for (name, w) in plan.selection.weights}
    layers = [(name, b, w, False) for (name, b), w in sorted(plan.selection.biases.items())]
    layers += [(name, b, weight_of[name], True) for name, b in sorted(_matmul_biases(index, plan, by_name).items())]
    for name, b, w, float_add in layers:
        node = by_name[name]
        if float_add:
            if node.input[0] not in plan.activations or (name, w) not in plan.weights:
                continue
            float_adds.add(b)
        elif (node.op_type not in CORRECTABLE or node.input[0] not in plan.activations
                or (name, b) not in plan.weights or w not in inits):
            continue
        chosen = plan.integers.get((name, w))  # integers a pass chose instead of nearest rounding
        key = (model_key, name, w, _params_key(plan.activations[node.input[0]]), _params_key(plan.weights[(name, w)]),
               max_samples, None if chosen is None else hashlib.sha256(chosen[0].tobytes()).hexdigest())
        targets.append((key, name, b))
        if measured is None or key not in measured.sums:
            probed[_layer_probe(probe, node, plan, tensor_array(inits[w]), w, opset)] = key
    if not targets:
        return 0
    found = dict(measured.sums) if measured is not None else {}
    if probed:
        sums: dict[str, np.ndarray] = {}
        count = 0
        for values in run_probe(model, probe, samples, max_samples):
            for out, value in values.items():
                sums[out] = sums.get(out, 0.0) + value.astype(np.float64)
            count += 1
        found.update({probed[out]: (total, count) for out, total in sums.items()})
        if measured is not None:
            measured.sums.update({probed[out]: (total, count) for out, total in sums.items()})
    changed = 0
    for key, name, b in targets:
        if key not in found:
            continue
        total, count = found[key]
        shift = total / max(count, 1)
        bias = tensor_array(inits[b]).astype(np.float64)
        if shift.shape != bias.shape or not np.all(np.isfinite(shift)):
            continue
        corrected = (bias + shift).astype(np.float32)
        inits[b].CopyFrom(numpy_helper.from_array(corrected, b))
        if b not in float_adds:
            refresh_bias_params(model, plan, name, b, x=by_name[name].input[0], value=corrected)
        changed += 1
    return changed
