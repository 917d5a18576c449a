"""Store weights int8 with a DequantizeLinear in front of their (float) layer, in any graph.

For layers onnxruntime has no QDQ fusion for (LSTM/GRU/RNN) and for layers inside If/Loop/Scan
bodies, whose activations are not calibrated: the file shrinks 4x and the layer computes in
float on the exact dequantized weights (the DQ runs once per inference, so its cost is one pass
over the weight bytes). An initializer captured from an outer graph is quantized once, where
it lives. Identical weights in several bodies (onnxruntime's constant folding copies a captured
weight into each body that reshapes it) are stored once, in the innermost graph all their
readers see. The DequantizeLinear (or Cast and Mul) reading them sits in that same graph, once,
and bodies read its float output from there: a DQ inside a body reading int8 tensors of an
outer graph made onnxruntime 1.32 fail to load the model (its ``TransposeDQWeightsForMatMulNBits``
looks the weight up among the body's own initializers: "Missing required weight"), and in a
Loop the DQ would run at every iteration.

A layer whose float compute must stay as fast as fp32's (the CPU fallback when int8 kernels are
estimated slower, ``pipeline/float_compute.py``) gets its weight as ``Cast(int8) * scale``
instead (``WeightOnly.fold``): onnxruntime's constant folding leaves DequantizeLinear alone
while its QDQ optimisations are on (``skip_dequantize_linear`` in
``onnxruntime/core/optimizer/constant_folding.cc``), so a DQ'd weight is no initializer to the
Conv and its prepacked fp32 kernels; a Cast and a Mul of initializers are folded into one float
initializer when the session loads, and the runtime graph is fp32's. Its per-channel scales are
stored float16 behind a Cast (``half_scale``; folded at load as well): on a small mobile CNN the
float32 scales were 0.02 of the fp32 file. Each is rounded up to the next float16 and the int8
weights are quantized on that scale, so the weights dequantize to what the stored scale says and
none clips. Only where every scale of the layer is a normal float16 and the layer has at least
``MIN_HALF_SCALE_CHANNELS`` channels (below that the Cast node costs more than the 2 bytes a
channel saves). DequantizeLinear's scales stay float32: an integer kernel fusion, or an EP's,
wants them an initializer.

Recurrent weights (num_directions, rows, K) get one scale per row of each direction: with one
direction the DQ's axis is 1; with two, the int8 tensor is stored (2 * rows, K) with a scale per
row on axis 0 and a Reshape restores the layout (DequantizeLinear takes a single axis).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.ops.recurrent import is_recurrent
from onnxquant.ops.rules import weight_axis
from onnxquant.passes.names import fresh_name
from onnxquant.passes.node_index import attributes
from onnxquant.passes.scopes import ScopedNode, iter_scoped_nodes
from onnxquant.qparams import (
    QParams,
    QuantDType,
    per_channel_absmax,
    quantize,
    symmetric,
)

MS_DOMAIN = "com.microsoft"

PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute
# Fewest channels whose scales are stored float16: the extra Cast node (about 34 bytes with its
# short names) costs what 17 channels save at 2 bytes each; 24 leaves a margin.
MIN_HALF_SCALE_CHANNELS = 24


@dataclass(frozen=True)
class WeightOnly:
    """Weight inputs of one node to store int8; ``per_channel`` false: one scale per tensor."""

    inputs: tuple[int, ...]
    per_channel: bool = True
    reason: str = ""  # why the layer's compute stays float
    # Cast(int8) * scale, which onnxruntime folds into a float initializer at load (full 8 bits,
    # symmetric int8 whatever the recipe's weight type: no integer kernel reads it)
    fold: bool = False


@dataclass
class WeightOnlyResult:
    nodes: int = 0  # nodes whose weights were replaced
    tensors: int = 0  # float initializers stored int8
    float_bytes: int = 0  # bytes of the float weights replaced
    dynamic_lstm: int = 0  # LSTMs turned into DynamicQuantizeLSTM


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.used: set[str] = set()
        for graph in iter_graphs(model.graph):
            self.used.update(i.name for i in graph.initializer)
            self.used.update(v.name for v in [*graph.input, *graph.output])
            for node in graph.node:
                self.used.update([*node.input, *node.output, node.name])

    def fresh(self, base: str) -> str:
        return fresh_name(self.used, base)


def _layout(node: onnx.NodeProto, index: int, shape: tuple[int, ...], per_channel: bool,
            opset: int) -> tuple[tuple[int, ...], int | None]:
    """(shape the int8 tensor is stored in, its scale axis) for input ``index`` of ``node``."""
    if not per_channel or opset < PER_CHANNEL_OPSET:
        return shape, None
    if is_recurrent(node) and len(shape) == 3:
        return ((shape[0] * shape[1], shape[2]), 0) if shape[0] > 1 else (shape, 1)
    return shape, weight_axis(node, len(shape))


class _Store:
    """Int8 copies of float initializers, each content stored once, in a graph all readers see."""

    def __init__(self, model: onnx.ModelProto, weight_type: QuantDType, result: WeightOnlyResult) -> None:
        self.names = _Names(model)
        self.weight_type = weight_type
        self.result = result
        self.stored: dict[tuple, list[str]] = {}  # (owner path, name, layout) -> tensor names
        self.by_content: dict[bytes, tuple] = {}  # identical weights (bodies often carry copies)
        self.home: dict[tuple, list[str]] = {}  # first key of a content -> scope paths down to its graph
        self.pending: dict[tuple, list[onnx.TensorProto]] = {}
        self.replaced: dict[str, set[str]] = {}  # graph path -> float initializers now stored int8
        self.initializers: dict[str, dict[str, onnx.TensorProto]] = {}  # graph path -> its initializers by name
        self.half_scales: set[str] = set()  # folded weights' scales stored float16 (read through a Cast)
        self.key_of: dict[tuple[str, ...], tuple] = {}  # int8 tensor names -> first key of their content

    def find(self, scoped: ScopedNode, name: str) -> tuple[str, onnx.TensorProto] | None:
        """(owner graph path, initializer) of a float32 weight ``scoped`` reads, else None (the
        innermost visible graph that holds ``name``; each graph indexed once: linear in the graph)."""
        if not name:
            return None
        for path, graph in reversed(scoped.scopes):
            if path not in self.initializers:
                self.initializers[path] = {i.name: i for i in graph.initializer}
            init = self.initializers[path].get(name)
            if init is not None:
                return (path, init) if init.data_type == onnx.TensorProto.FLOAT else None
        return None

    def int8(self, scoped: ScopedNode, owner_path: str, init: onnx.TensorProto, layout: tuple,
             make: Callable[[np.ndarray, Callable[[str], str]], list[onnx.TensorProto]]) -> list[str]:
        """Names of the int8 tensors of ``init`` in ``layout``; ``make`` builds them from the float value."""
        key = (owner_path, init.name, layout)
        if key in self.stored:
            return self.stored[key]
        value = tensor_array(init)
        chain = [path for path, _ in scoped.scopes]
        chain = chain[:chain.index(owner_path) + 1]
        digest = hashlib.sha256(repr((value.shape, layout)).encode() + value.tobytes()).digest()
        first = self.by_content.get(digest)
        if first is not None:
            self.home[first] = [a for a, b in zip(self.home[first], chain) if a == b]  # seen by both readers
            self.stored[key] = self.stored[first]
        else:
            tensors = make(value, lambda suffix: self.names.fresh(f"{init.name}_{suffix}"))
            self.by_content[digest], self.home[key], self.pending[key] = key, chain, tensors
            self.stored[key] = [t.name for t in tensors]
            self.key_of[tuple(self.stored[key])] = key
            self.result.tensors += 1
        self.replaced.setdefault(owner_path, set()).add(init.name)
        self.result.float_bytes += value.size * 4
        return self.stored[key]

    def home_path(self, tensor_names: list[str]) -> str:
        """The graph that stores ``tensor_names`` (known once every reader has been seen)."""
        return self.home[self.key_of[tuple(tensor_names)]][-1]

    def written(self) -> dict[str, list[onnx.TensorProto]]:
        out: dict[str, list[onnx.TensorProto]] = {}
        for key, tensors in self.pending.items():
            out.setdefault(self.home[key][-1], []).extend(tensors)
        return out


def _row_quantized(value: np.ndarray, stored_shape: tuple[int, ...], axis: int | None, weight_type: QuantDType,
                   reduce_range: bool = False) -> tuple[np.ndarray, QParams]:
    value = value.reshape(stored_shape)
    absmax = per_channel_absmax(value, axis) if axis is not None else np.abs(value).max(initial=0.0)
    params = symmetric(absmax, weight_type, axis, reduce_range)
    return quantize(value, params), params


def quantize_weights_only(model: onnx.ModelProto, targets: dict[str, WeightOnly], weight_type: QuantDType,
                          opset: int, dynamic_lstm: bool = False, reduce_range: bool = True,
                          fold_recurrent: bool = False) -> WeightOnlyResult:
    """Rewrite ``model`` in place: the named nodes (qualified names, see ``scopes``) read int8 weights.

    ``dynamic_lstm``: LSTMs become onnxruntime's ``DynamicQuantizeLSTM`` (com.microsoft, CPU),
    which multiplies int8 weights directly (``reduce_range``: 7-bit weights, which the u8s8
    kernels of CPUs without VNNI need to not saturate); other layers get a DequantizeLinear.
    ``fold_recurrent``: recurrent layers get ``Cast(int8) * scale`` (``WeightOnly.fold``) where the
    layout allows, so their float kernels read prepacked initializers as in fp32 (a DequantizeLinear
    in front of Resemblyzer's LSTMs made them 1.4x slower than fp32 at batch 8).
    """
    result = WeightOnlyResult()
    if not targets:
        return result
    store = _Store(model, weight_type, result)
    dq_of: dict[tuple, str] = {}
    placed: dict[tuple, list[onnx.NodeProto]] = {}  # int8 tensor names -> the nodes reading them
    for scoped in list(iter_scoped_nodes(model.graph)):
        target = targets.get(scoped.qualified)
        if target is None:
            continue
        node = scoped.node
        if fold_recurrent and is_recurrent(node):
            target = replace(target, fold=True)
        if dynamic_lstm and _to_dynamic_lstm(scoped, store, target, reduce_range):
            result.nodes += 1
            result.dynamic_lstm += 1
            continue
        changed = False
        for index in target.inputs:
            found = store.find(scoped, node.input[index] if len(node.input) > index else "")
            if found is None:
                continue
            owner_path, init = found
            shape = tuple(init.dims)
            stored_shape, axis = _layout(node, index, shape, target.per_channel, opset)
            if target.fold and stored_shape == shape:
                node.input[index] = _folded_weight(scoped, store, owner_path, init, axis, dq_of, placed)
                changed = True
                continue

            def make(value: np.ndarray, fresh: Callable[[str], str]) -> list[onnx.TensorProto]:
                q, params = _row_quantized(value, stored_shape, axis, weight_type)
                tensors = [numpy_helper.from_array(q, fresh("quantized")),
                           numpy_helper.from_array(np.asarray(params.scale, np.float32), fresh("scale")),
                           numpy_helper.from_array(np.asarray(params.zero_point), fresh("zero_point"))]
                if stored_shape != shape:
                    tensors.append(numpy_helper.from_array(np.asarray(shape, np.int64), fresh("shape")))
                return tensors

            tensor_names = store.int8(scoped, owner_path, init, ("dq", stored_shape, axis), make)
            dq_key = ("dq", *tensor_names)
            if dq_key not in dq_of:
                name = init.name
                out = store.names.fresh(f"{name}_dequantized")
                dq_out = store.names.fresh(f"{name}_dequantized_rows") if len(tensor_names) == 4 else out
                nodes = [helper.make_node("DequantizeLinear", tensor_names[:3], [dq_out],
                                          name=store.names.fresh(f"{name}_DequantizeLinear"),
                                          **({"axis": axis} if axis is not None else {}))]
                if len(tensor_names) == 4:
                    nodes.append(helper.make_node("Reshape", [dq_out, tensor_names[3]], [out],
                                                  name=store.names.fresh(f"{name}_Reshape")))
                placed[dq_key] = nodes
                dq_of[dq_key] = out
            node.input[index] = dq_of[dq_key]
            changed = True
        result.nodes += changed
    written = store.written()
    front: dict[str, list[onnx.NodeProto]] = {}  # graph path -> nodes to put first
    for key, nodes in placed.items():
        front.setdefault(store.home_path(list(key[1:])), []).extend(nodes)
    # Deepest graphs first, each looked up afresh: rewriting a graph's node list copies the
    # bodies it holds, so a graph fetched before its parent was rewritten would be stale.
    for path in sorted({*front, *store.replaced, *written}, key=lambda p: (-p.count("/"), p)):
        graph = _graph_at(model, path)
        graph.initializer.extend(written.get(path, []))
        if path in front:
            rest = list(graph.node)
            del graph.node[:]
            graph.node.extend(front[path] + rest)
        if path in store.replaced:
            drop_unread(graph, store.replaced[path])
    if result.dynamic_lstm and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return result


def half_scale(scale: np.ndarray) -> np.ndarray | None:
    """``scale`` as float16, each rounded up to the next float16 (the weights quantized on it then
    never clip), or None where a float16 would not do: fewer than ``MIN_HALF_SCALE_CHANNELS``
    scales, or one outside float16's normal range (subnormals lose relative precision)."""
    scale = np.asarray(scale, np.float32)
    if scale.size < MIN_HALF_SCALE_CHANNELS:
        return None
    with np.errstate(over="ignore"):
        half = scale.astype(np.float16)
    below = half.astype(np.float32) < scale
    half[below] = np.nextafter(half[below], np.float16(np.inf))
    if not np.all(np.isfinite(half)) or half.min() < np.finfo(np.float16).tiny:
        return None
    return half


def _folded_weight(scoped: ScopedNode, store: _Store, owner_path: str, init: onnx.TensorProto, axis: int | None,
                   made: dict[tuple, str], placed: dict[tuple, list[onnx.NodeProto]]) -> str:
    """The name of ``Cast(int8 weight) * scale`` for ``init``, built once, in the graph that stores
    the int8 tensors; the scale ``Cast(float16 scale)`` where ``half_scale`` allows."""
    shape = tuple(init.dims)

    def make(value: np.ndarray, fresh: Callable[[str], str]) -> list[onnx.TensorProto]:
        q, params = _row_quantized(value, shape, axis, "int8")
        broadcast = [1] * len(shape)
        if axis is not None:
            broadcast[axis] = shape[axis]
        half = half_scale(params.scale) if axis is not None else None
        if half is None:
            scale = numpy_helper.from_array(np.asarray(params.scale, np.float32).reshape(broadcast), fresh("scale"))
        else:  # the weights again, on the scale the file holds
            q = quantize(value.reshape(shape), replace(params, scale=half.astype(np.float64)))
            scale = numpy_helper.from_array(half.reshape(broadcast), fresh("scale_fp16"))
            store.half_scales.add(scale.name)
        return [numpy_helper.from_array(q, fresh("int8")), scale]

    tensor_names = store.int8(scoped, owner_path, init, ("fold", shape, axis), make)
    key = ("fold", *tensor_names)
    if key not in made:
        name = init.name
        cast, out = store.names.fresh(f"{name}_int8_as_float"), store.names.fresh(f"{name}_folded")
        nodes = [helper.make_node("Cast", [tensor_names[0]], [cast], name=store.names.fresh(f"{name}_Cast"),
                                  to=onnx.TensorProto.FLOAT)]
        scale = tensor_names[1]
        if scale in store.half_scales:
            scale = store.names.fresh(f"{name}_scale_as_float")
            nodes.append(helper.make_node("Cast", [tensor_names[1]], [scale],
                                          name=store.names.fresh(f"{name}_scale_Cast"), to=onnx.TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [cast, scale], [out], name=store.names.fresh(f"{name}_Mul")))
        placed[key] = nodes
        made[key] = out
    return made[key]


def _to_dynamic_lstm(scoped: ScopedNode, store: _Store, target: WeightOnly, reduce_range: bool) -> bool:
    """Turn an LSTM into DynamicQuantizeLSTM in place: W and R int8 (num_directions, K, 4 * hidden),
    transposed, with a scale per gate row of each direction. False where it does not apply."""
    node = scoped.node
    if not (is_recurrent(node) and node.op_type == "LSTM") or not target.per_channel or store.weight_type != "int8":
        return False
    if attributes(node).get("layout", 0) != 0:
        return False
    found = [store.find(scoped, node.input[i]) for i in (1, 2)]
    if any(f is None or len(f[1].dims) != 3 for f in found):
        return False

    def make(value: np.ndarray, fresh: Callable[[str], str]) -> list[onnx.TensorProto]:
        directions, rows, k = value.shape
        q, params = _row_quantized(value, (directions * rows, k), 0, "int8", reduce_range)
        q = np.ascontiguousarray(q.reshape(directions, rows, k).transpose(0, 2, 1))
        return [numpy_helper.from_array(q, fresh("quantized_transposed")),
                numpy_helper.from_array(params.scale.astype(np.float32).reshape(directions, rows), fresh("scale")),
                numpy_helper.from_array(params.zero_point.reshape(directions, rows), fresh("zero_point"))]

    w, r = (store.int8(scoped, owner, init, ("dynamic_lstm", reduce_range), make) for owner, init in found)
    inputs = [*node.input[:8], *[""] * (8 - len(node.input))]
    inputs[1], inputs[2] = w[0], r[0]
    kept = [a for a in node.attribute if a.name != "layout"]
    del node.input[:]
    node.input.extend([*inputs, w[1], w[2], r[1], r[2]])
    del node.attribute[:]
    node.attribute.extend(kept)
    node.op_type, node.domain = "DynamicQuantizeLSTM", MS_DOMAIN
    return True


def _graph_at(model: onnx.ModelProto, path: str) -> onnx.GraphProto:
    if not path:
        return model.graph
    for scoped in iter_scoped_nodes(model.graph):
        for attr in scoped.node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and f"{scoped.qualified}/{attr.name}" == path:
                return attr.g
            for k, body in enumerate(attr.graphs):
                if f"{scoped.qualified}/{attr.name}/{k}" == path:
                    return body
    raise KeyError(path)


def drop_unread(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove float initializers that no node of ``graph`` (or of its bodies) reads any more."""
    read = {o.name for o in graph.output}
    for sub in iter_graphs(graph):
        for node in sub.node:
            read.update(node.input)
    kept = [i for i in graph.initializer if i.name not in candidates or i.name in read]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
