"""Empirical bias correction: cancel the mean shift int8 adds to each layer's output channels.

Per quantized Conv/Gemm with a bias (or MatMul followed by a float Add of a constant bias), the
correction is the layer's mean output over the calibration samples, float minus fake-quantized
(input and weight rounded as the rewrite rounds them, both fed the float input), per output
channel. That mean is the layer's own systematic error (rounding of weights and input); adding it
to the bias removes it. Depthwise convolutions, whose few weights per channel round badly, gain
the most. Feeding both the float input keeps each layer's correction its own, so corrections do
not compound along the network (NNCF's "fast" variant).

The mean output is linear in the input's mean patch (``patch_means``): for input x, its rounding
error r = x - Q(x) and weights W, Wq, the shift is (W - Wq) . P(x) + Wq . P(r). So the pass over
the samples only measures P(x) and P(r) of each corrected layer's input (a QuantizeLinear/
DequantizeLinear, a Sub and a ReduceMean, or, under a spatial kernel, per-tap sums in numpy), not
a fake-quantized copy of each layer: the float model's cost plus little, where the copies cost
about as much again. ConvTranspose is still measured with such a copy (a "shadow" layer).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import model_digest, tensor_array, uncached_key
from onnxquant.passes.node_index import NodeIndex, attributes
from onnxquant.passes.prepare import default_opset
from onnxquant.planner import QuantPlan, refresh_bias_params
from onnxquant.qparams import QParams, dequantize
from onnxquant.recovery.patch_means import ConvGeometry, conv_mean_output, patch_means, tap_selection
from onnxquant.recovery.probe import Probe, run_probe
from onnxquant.pipeline.clock import timed

CORRECTABLE = {"Conv", "ConvTranspose", "Gemm"}
STATIC_BIAS_RANK = 3


def _vector_like(dims) -> bool:
    return len(dims) == 1 or (len(dims) >= STATIC_BIAS_RANK and all(d == 1 for d in dims[:-1]))


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
        # (or (1, ..., 1, N) of rank 3+, as passes/static_bias.py writes a static-shape 3-D Linear's)
        if (bias in inits and _vector_like(inits[bias].dims)
                and len(inits[w].dims) == 2 and inits[bias].dims[-1] == inits[w].dims[1] and index.uses(bias) == 1):
            found[name] = bias
    return found


def _layer_copy(probe: Probe, node: onnx.NodeProto, x: str, weight: str, hint: str) -> str:
    """A copy of ``node`` reading ``x`` and ``weight`` instead of its own input and weight."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:2]
    copy.input[0:0] = [x, weight]
    copy.output[:] = [probe.name(hint)]
    copy.name = copy.output[0]
    probe.nodes.append(copy)
    return copy.output[0]


def _layer_probe(probe: Probe, node: onnx.NodeProto, plan: QuantPlan, weight: np.ndarray, w: str, opset: int,
                 reference: np.ndarray | None = None) -> str:
    """``reference``: the float weight before a rounding pass overwrote ``weight`` with its integers
    (the float side of the difference then runs a copy with it)."""
    x = node.input[0]
    x_dq = probe.fake_quant(x, plan.activations[x], opset)
    w_fq = probe.constant(dequantize(plan.quantized_weight((node.name, w), weight), plan.weights[(node.name, w)]), "wfq")
    shadow = _layer_copy(probe, node, x_dq, w_fq, "shadow")
    exact = node.output[0] if reference is None else _layer_copy(probe, node, x, probe.constant(reference, "wref"), "ref")
    diff = probe.node("Sub", [exact, shadow], "diff")
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
    again (every probe output is computed on its own, so the sums are the same bits).

    ``inputs`` keeps the measured input means themselves (P(x) and P(x - Q(x)), by the model's
    bytes, the input, its params, how it is reduced and the samples), so a layer whose weight
    params or integers changed is corrected without a pass. ``expected``: activation params the
    next re-plans are expected to use (the search's range estimators, planned before their
    trials): a pass that measures an input also measures its rounding error under each of these,
    so those trials find their inputs measured and run the float model on no sample again (it is
    most of a pass's cost: EfficientNet-Lite0 and PP-OCRv4 det's probes cost 1.1-1.2 times the
    float model). A wrong expectation costs time, never bits: a trial uses only what its own
    params' keys find."""

    source: Any = None  # the calibration data the sums were taken over (compared by identity)
    context: str = ""  # and what else fits the samples to the model (preprocessing, sample cap)
    sums: dict[tuple, tuple[np.ndarray, int]] = field(default_factory=dict)  # key -> (sum, samples)
    inputs: dict[tuple, _InputMeans] = field(default_factory=dict)  # input key -> its measured means
    expected: list[Mapping[str, QParams]] = field(default_factory=list)  # tensor -> params, per expected plan

    def over(self, source: Any, context: str) -> MeasuredShifts:
        """This cache, emptied first when the samples are not those its sums were taken over
        (the expected params stay: they do not depend on the samples)."""
        if source is not self.source or context != self.context:
            self.source, self.context = source, context
            self.sums.clear()
            self.inputs.clear()
        return self


def _params_key(params: QParams) -> tuple:
    return (params.dtype, params.axis, np.asarray(params.scale).tobytes(), np.asarray(params.zero_point).tobytes(),
            np.asarray(params.zero_point).dtype.str)


# Layers measured through their input's mean patch; any other correctable layer runs a shadow copy.
MEASURED_BY_MEANS = {"Conv", "Gemm", "MatMul"}


@dataclass
class _InputMeans:
    """One input to measure: P(x) and P(x - Q(x)), summed over the samples so far."""

    geometry: ConvGeometry | None  # None: reduced in the graph, to channel means
    outputs: tuple[str, str]  # probe outputs: (x, rounding error), their tap sums, or their channel means
    positions: int = 0  # output positions the graph's tap sums are over (0: reduced here, in numpy)
    sums: list[np.ndarray | None] = field(default_factory=lambda: [None, None])
    count: int = 0

    def reduce(self, values: dict[str, np.ndarray], memo: dict[tuple, np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """This sample's two means. ``memo``: means already reduced from this sample's outputs,
        by output and geometry (the inputs measured under several params share their x)."""
        memo = {} if memo is None else memo
        return self._one(values, self.outputs[0], memo), self._one(values, self.outputs[1], memo)

    def _one(self, values: dict[str, np.ndarray], output: str, memo: dict[tuple, np.ndarray]) -> np.ndarray:
        key = (output, self.geometry, self.positions)
        if key not in memo:
            value = values[output]
            if self.geometry is None:
                memo[key] = value.astype(np.float64)
            elif self.positions:
                memo[key] = value.astype(np.float64) / self.positions
            else:
                memo[key] = patch_means(value, self.geometry)
        return memo[key]

    def add(self, means: tuple[np.ndarray, np.ndarray]) -> None:
        self.sums = [m if s is None else s + m for s, m in zip(self.sums, means)]


def _channel_axes(node: onnx.NodeProto, weight: np.ndarray) -> list[int]:
    """The axes a Gemm's or a pointwise Conv's input is averaged over to get its channel means."""
    if node.op_type == "Gemm":
        return [1] if attributes(node).get("transA", 0) else [0]
    return [0, *range(2, weight.ndim)]


def _reduced(node: onnx.NodeProto, weight: np.ndarray) -> tuple[ConvGeometry | None, Any]:
    """How ``node``'s input is reduced: its kernel geometry (None: to channel means) and a key
    saying so for every layer reading it alike."""
    geometry = ConvGeometry.of(node, weight.shape) if node.op_type == "Conv" else None
    if geometry is not None and geometry.pointwise:
        geometry = None
    return geometry, "rows" if node.op_type == "MatMul" else geometry or tuple(_channel_axes(node, weight))


def _measure_input(probe: Probe, node: onnx.NodeProto, params: QParams, weight: np.ndarray, opset: int,
                   known: dict[tuple, _InputMeans], model_shapes: dict[str, onnx.ValueInfoProto],
                   sides: dict[tuple, tuple[str, Any]]) -> _InputMeans:
    """The probe nodes measuring ``node``'s input quantized with ``params`` (shared by layers
    reading it alike). ``sides``: how each input's x side is measured already, with its
    reduction (x, reduced) -> (the x output, a function making the same reduction of another
    tensor): measured once for every params it is rounded with."""
    x = node.input[0]
    geometry, reduced = _reduced(node, weight)
    key = (x, _params_key(params), reduced)
    if key in known:
        return known[key]
    err = probe.node("Sub", [x, probe.fake_quant(x, params, opset)], "err")
    spatial = _static_spatial(model_shapes, x) if geometry is not None else None
    in_graph = geometry is not None and spatial is not None and len(spatial) in (1, 2)
    positions = int(np.prod([geometry.axis(i, n)[0] for i, n in enumerate(spatial)])) if in_graph else 0
    if (x, reduced) not in sides:
        sides[(x, reduced)] = _side(probe, x, node, geometry, spatial if in_graph else None, weight, opset)
    measured, same_reduction = sides[(x, reduced)]
    outputs = (measured, same_reduction(err))
    probe.outputs.extend(o for o in outputs if o not in probe.outputs)
    known[key] = _InputMeans(geometry, outputs, positions)
    return known[key]


def _side(probe: Probe, x: str, node: onnx.NodeProto, geometry: ConvGeometry | None,
          spatial: tuple[int, ...] | None, weight: np.ndarray, opset: int) -> tuple[str, Any]:
    """The probe output measuring ``x`` for ``node`` and a function adding the same reduction of
    another tensor (its rounding error): per-tap sums in the graph where the input's spatial size
    is fixed, channel means for pointwise layers, token-row means for MatMul; the raw tensor
    (reduced in numpy) otherwise."""
    if geometry is not None and spatial is not None:
        # Per-tap sums in the graph, one matrix product per spatial axis: only [C, *kernel] is fetched.
        last = probe.constant(tap_selection(geometry, len(spatial) - 1, spatial[-1]).T, "taps")
        first = probe.constant(tap_selection(geometry, 0, spatial[0]), "taps") if len(spatial) == 2 else None

        def tap_sums(t: str) -> str:
            t = probe.node("MatMul", [t, last])
            if first is not None:
                t = probe.node("MatMul", [first, t])
            return probe.reduce("ReduceMean", t, [0], opset)

        return tap_sums(x), tap_sums
    if geometry is not None:
        return x, lambda t: t
    if node.op_type == "MatMul":  # channels last, any rank: flatten the rest away
        shape = probe.constant(np.array([-1, weight.shape[0]], np.int64), "shape")

        def rows(t: str) -> str:
            return probe.reduce("ReduceMean", probe.node("Reshape", [t, shape]), [0], opset)

        return rows(x), rows
    axes = _channel_axes(node, weight)

    def channels(t: str) -> str:
        return probe.reduce("ReduceMean", t, axes, opset)

    return channels(x), channels


def _input_key(model_key: str, node: onnx.NodeProto, weight: np.ndarray, params: QParams,
               max_samples: int | None) -> tuple:
    """What an input's measured means depend on: the model's bytes, the input, its params, how
    it is reduced for ``node``, and the samples."""
    return (model_key, node.input[0], _params_key(params), _reduced(node, weight)[1], max_samples)


def _static_spatial(shapes: dict[str, onnx.ValueInfoProto], name: str) -> tuple[int, ...] | None:
    """The spatial sizes of a Conv input (N, C, *spatial) when shape inference fixed them all."""
    value = shapes.get(name)
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim[2:]
    sizes = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    return sizes if sizes and all(n > 0 for n in sizes) else None


def _mean_shift(node: onnx.NodeProto, weight: np.ndarray, rounded: np.ndarray, means: _InputMeans) -> np.ndarray:
    """The summed float-minus-fake-quantized output shift: (W - Wq) . P(x) + Wq . P(r)."""
    px, perr = means.sums
    delta = weight.astype(np.float64) - rounded
    if node.op_type == "Conv":
        group = int(attributes(node).get("group", 1))
        return conv_mean_output(delta, px, group) + conv_mean_output(rounded, perr, group)
    if node.op_type == "Gemm":
        attrs = attributes(node)
        if attrs.get("transB", 0):
            delta, rounded = delta.T, rounded.T
        return float(attrs.get("alpha", 1.0)) * _rows_times(px, perr, delta, rounded)
    return _rows_times(px, perr, delta, rounded)


def _rows_times(px: np.ndarray, perr: np.ndarray, delta: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """px . delta + perr . rounded, summed in a fixed order (einsum, not BLAS, whose threads
    could change the last bits and so the output with the thread count)."""
    return np.einsum("k,kn->n", px, delta) + np.einsum("k,kn->n", perr, rounded)


@timed("bias_correction")
def correct_biases(
    model: onnx.ModelProto,
    plan: QuantPlan,
    samples: Iterable[dict[str, np.ndarray]],
    max_samples: int | None = None,
    measured: MeasuredShifts | None = None,
    originals: dict[str, np.ndarray] | None = None,
) -> int:
    """Shift the biases of ``model`` (in place) and refresh their int32 params in ``plan``.

    ``measured``: sums measured before for this model and these samples, used where they fit
    (and the new ones added). ``originals``: weight name -> its float value before a rounding
    pass (GPTQ, learned rounding) overwrote it with its integers; the weight error is measured
    against it, else that pass's mean shift would go uncorrected. Returns how many biases changed.
    """
    originals = originals or {}
    index = NodeIndex(model.graph)
    inits = index.inits
    by_name = {n.name: n for n in index.nodes}
    opset = default_opset(model)
    model_key = model_digest(model) if measured is not None else ""
    if model_key is None:  # unhashable: its sums are kept nowhere no later call could find them
        measured, model_key = None, uncached_key()
    probe = Probe(prefix="_oq_bc")
    targets: list[tuple[tuple, str, str]] = []  # (measurement key, node, bias), in correction order
    probed: dict[str, tuple] = {}  # shadow probe output -> measurement key
    # (the weights are read again after the probe ran: held here for every layer, their float64
    # roundings were 85 MB on all-MiniLM-L6-v2, alive while onnxruntime held its session)
    by_means: list[tuple[tuple, onnx.NodeProto, str, _InputMeans]] = []
    inputs: dict[tuple, _InputMeans] = {}  # the inputs this pass measures, by (x, params, reduction)
    sides: dict[tuple, tuple[str, Any]] = {}
    kept: dict[int, tuple] = {}  # id of a measured input -> its key in ``measured.inputs``
    read: list[tuple[onnx.NodeProto, np.ndarray]] = []  # layers whose input this pass measures
    graph = model.graph
    shapes = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
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
        reference = originals.get(w)
        key = (model_key, name, w, _params_key(plan.activations[node.input[0]]), _params_key(plan.weights[(name, w)]),
               max_samples, None if chosen is None else hashlib.sha256(chosen[0].tobytes()).hexdigest(),
               None if reference is None else hashlib.sha256(np.ascontiguousarray(reference).tobytes()).hexdigest())
        targets.append((key, name, b))
        if measured is not None and key in measured.sums:
            continue
        weight = tensor_array(inits[w])
        if node.op_type in MEASURED_BY_MEANS and weight.ndim >= 2:
            params = plan.activations[node.input[0]]
            held = _input_key(model_key, node, weight, params, max_samples)
            means = measured.inputs.get(held) if measured is not None else None
            if means is None:
                means = _measure_input(probe, node, params, weight, opset, inputs, shapes, sides)
                kept[id(means)] = held
                read.append((node, weight))
            by_means.append((key, node, w, means))
        else:
            probed[_layer_probe(probe, node, plan, weight, w, opset, reference)] = key
    if not targets:
        return 0
    if measured is not None:  # the same inputs under the params later re-plans are expected to use
        for node, weight in read:
            for expected in measured.expected:
                params = expected.get(node.input[0])
                held = None if params is None else _input_key(model_key, node, weight, params, max_samples)
                if held is not None and held not in measured.inputs and held not in kept.values():
                    kept[id(_measure_input(probe, node, params, weight, opset, inputs, shapes, sides))] = held
    found = dict(measured.sums) if measured is not None else {}
    new: dict[tuple, tuple[np.ndarray, int]] = {}
    if probe.outputs:
        new = _run_measurements(model, probe, samples, max_samples, probed, list(inputs.values()))
        if measured is not None:
            measured.inputs.update((kept[id(means)], means) for means in inputs.values())
    for key, node, w, means in by_means:
        weight = tensor_array(inits[w])
        # the integers the rewrite will store (a pass may have chosen them instead of nearest rounding)
        rounded = dequantize(plan.quantized_weight((node.name, w), weight), plan.weights[(node.name, w)]).astype(np.float64)
        reference = originals.get(w)
        new[key] = (_mean_shift(node, weight if reference is None else reference, rounded, means), means.count)
    found.update(new)
    if measured is not None:
        measured.sums.update(new)
    changed = 0
    for key, name, b in targets:
        if key not in found:
            continue
        total, count = found[key]
        shift = total / max(count, 1)
        bias = tensor_array(inits[b]).astype(np.float64)
        if b in float_adds and shift.ndim == 1 and shift.size == bias.size:
            shift = shift.reshape(bias.shape)  # (a MatMul's bias of the activation's rank)
        if shift.shape != bias.shape or not np.all(np.isfinite(shift)):
            continue
        corrected = (bias + shift).astype(np.float32)
        inits[b].CopyFrom(numpy_helper.from_array(corrected, b))
        if b not in float_adds:
            refresh_bias_params(model, plan, name, b, x=by_name[name].input[0], value=corrected)
        changed += 1
    return changed


def _run_measurements(model: onnx.ModelProto, probe: Probe, samples: Iterable[dict[str, np.ndarray]],
                      max_samples: int | None, probed: dict[str, tuple],
                      inputs: list[_InputMeans]) -> dict[tuple, tuple[np.ndarray, int]]:
    """One pass over the samples: the shadow layers' summed shifts (by measurement key), and
    each measured input's summed means (into ``inputs``, with its sample count)."""
    def reduce(values: dict[str, np.ndarray]) -> dict:
        memo: dict[tuple, np.ndarray] = {}
        return {"shadow": {out: values[out] for out in probed}, "means": [m.reduce(values, memo) for m in inputs]}

    sums: dict[str, np.ndarray] = {}
    count = 0
    for reduced in run_probe(model, probe, samples, max_samples, reduce=reduce):
        for out, value in reduced["shadow"].items():
            sums[out] = sums.get(out, 0.0) + value.astype(np.float64)
        for means, value in zip(inputs, reduced["means"]):
            means.add(value)
        count += 1
    for means in inputs:
        means.count = count
    return {probed[out]: (total, count) for out, total in sums.items()}
