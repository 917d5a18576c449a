"""Rewrite HardSigmoid (and HardSwish) into ops onnxruntime runs as integer kernels.

onnxruntime's CPU provider has no quantized HardSigmoid: in a QDQ model every hard-swish and
every squeeze-excite gate of a mobile CNN stays a float island (DequantizeLinear -> HardSigmoid
-> Mul -> QuantizeLinear), and the model can run slower than fp32. HardSigmoid is
``clip(alpha * x + beta, 0, 1)``, a per-channel affine map plus a clip, which is exactly:
- when ``x`` comes from a Conv read by nothing else, that Conv with its weight scaled by alpha
  and its bias mapped to ``alpha * b + beta``, then ``Clip(0, 1)``;
- otherwise a depthwise 1x1 Conv (weight alpha, bias beta, one group per channel), then ``Clip(0, 1)``.
The Clip fuses into the Conv's output quantization (QLinearConv), and the Mul by the gate
becomes QLinearMul. ``HardSwish(x)`` is first spelled ``x * HardSigmoid(x)`` (onnxruntime runs
it that way itself). Float results are equal up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name, inserted
from onnxquant.passes.node_index import NodeIndex, attributes


@dataclass
class GateRewrite:
    """How many HardSigmoid gates were rewritten, and how."""

    folded: int = 0  # into the producing Conv
    depthwise: int = 0  # as a new depthwise 1x1 Conv
    hardswish_split: int = 0  # HardSwish spelled as x * HardSigmoid(x) first

    @property
    def total(self) -> int:
        return self.folded + self.depthwise


def _channels(model: onnx.ModelProto, tensor: str) -> tuple[int, int] | None:
    """(channels, rank) of a float activation laid out N, C, spatial..., from recorded shapes."""
    for info in [*model.graph.value_info, *model.graph.input]:
        if info.name != tensor:
            continue
        t = info.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            return None
        dims = t.shape.dim
        if len(dims) < 3 or not dims[1].HasField("dim_value") or dims[1].dim_value <= 0:
            return None
        return dims[1].dim_value, len(dims)
    return None


def _split_hardswish(graph: onnx.GraphProto, taken: set[str]) -> int:
    """``HardSwish(x)`` -> ``Mul(x, HardSigmoid(x))`` in place (same function, by definition)."""
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "HardSwish" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        base = node.name or "hardswish"
        gate = fresh_name(taken, f"{base}_gate")
        nodes.append(helper.make_node("HardSigmoid", [node.input[0]], [gate], name=fresh_name(taken, f"{base}_HardSigmoid"),
                                      alpha=1.0 / 6.0, beta=0.5))
        nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=fresh_name(taken, f"{base}_Mul")))
        count += 1
    if count:
        kept = [_detached(n) for n in nodes]
        del graph.node[:]
        graph.node.extend(kept)
    return count


def _foldable_conv(index: NodeIndex, x: str) -> int | None:
    """The Conv producing ``x`` if the gate is its only reader and its weight is a float initializer."""
    p = index.producer.get(x)
    if p is None or index.only_reader(x) is None:
        return None
    conv = index.nodes[p]
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.output) != 1:
        return None
    w = index.inits.get(conv.input[1]) if len(conv.input) > 1 else None
    if w is None or w.data_type != onnx.TensorProto.FLOAT:
        return None
    if len(conv.input) > 2 and conv.input[2]:
        b = index.inits.get(conv.input[2])
        if b is None or b.data_type != onnx.TensorProto.FLOAT:
            return None
    return p


def rewrite_hardsigmoid(model: onnx.ModelProto, opset: int) -> GateRewrite:
    """Rewrite in place every HardSigmoid on an N, C, spatial... activation whose channel count is
    known (shape inference must have run). Needs opset 11+ (Clip bounds as inputs)."""
    report = GateRewrite()
    if opset < 11:
        return report
    graph = model.graph
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output} \
        | {i.name for i in graph.initializer} | {i.name for i in graph.input}
    report.hardswish_split = _split_hardswish(graph, taken)
    index = NodeIndex(graph)
    replace: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    clip_bounds: tuple[str, str] | None = None
    dropped: set[str] = set()  # initializers of folded Convs, removed if nothing else reads them
    for k, node in enumerate(index.nodes):
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = attributes(node)
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        x, base = node.input[0], node.name or f"hardsigmoid_{k}"
        if clip_bounds is None:
            clip_bounds = (fresh_name(taken, "hardsigmoid_clip_min"), fresh_name(taken, "hardsigmoid_clip_max"))
            new_inits += [numpy_helper.from_array(np.array(0.0, np.float32), clip_bounds[0]),
                          numpy_helper.from_array(np.array(1.0, np.float32), clip_bounds[1])]
        p = _foldable_conv(index, x)
        if p is not None and p not in replace:
            conv = index.nodes[p]
            w = tensor_array(index.inits[conv.input[1]]).astype(np.float64)
            bias = (tensor_array(index.inits[conv.input[2]]).astype(np.float64)
                    if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0]))
            w_name, b_name = fresh_name(taken, f"{conv.input[1]}_gate"), fresh_name(taken, f"{base}_gate_bias")
            new_inits += [numpy_helper.from_array((w * alpha).astype(np.float32), w_name),
                          numpy_helper.from_array((bias * alpha + beta).astype(np.float32), b_name)]
            folded = _detached(conv)
            del folded.input[:]
            folded.input.extend([conv.input[0], w_name, b_name])
            replace[p] = [folded]
            dropped.update(conv.input[1:3])
            report.folded += 1
        else:
            shape = _channels(model, x)
            if shape is None:
                continue
            channels, rank = shape
            w_name, b_name = fresh_name(taken, f"{base}_dw_weight"), fresh_name(taken, f"{base}_dw_bias")
            new_inits += [numpy_helper.from_array(np.full((channels, 1) + (1,) * (rank - 2), alpha, np.float32), w_name),
                          numpy_helper.from_array(np.full(channels, beta, np.float32), b_name)]
            conv_out = fresh_name(taken, f"{base}_affine")
            replace[k] = [inserted(helper.make_node("Conv", [x, w_name, b_name], [conv_out],
                                                    name=fresh_name(taken, f"{base}_dw"), group=channels,
                                                    kernel_shape=[1] * (rank - 2)))]
            x = conv_out
            report.depthwise += 1
        clip = helper.make_node("Clip", [x, *clip_bounds], [node.output[0]], name=fresh_name(taken, f"{base}_clip"))
        replace.setdefault(k, []).append(clip)
    if not replace:
        return report
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(index.nodes):
        nodes.extend(replace.get(k, [node]))
    kept = [_detached(n) for n in nodes]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name in dropped and i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return report


def _detached(node: onnx.NodeProto) -> onnx.NodeProto:
    """Detached copy: clearing the graph's node list must not invalidate what we re-insert."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
