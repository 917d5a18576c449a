"""Store weights int8 with a DequantizeLinear in front of their (float) layer, in any graph.

For layers onnxruntime has no QDQ fusion for (LSTM/GRU/RNN) and for layers inside If/Loop/Scan
bodies, whose activations are not calibrated: the file shrinks 4x and the layer computes in
float on the exact dequantized weights (the DQ runs once per inference, so its cost is one pass
over the weight bytes). An initializer captured from an outer graph is quantized once, where
it lives; each body that reads it gets its own DequantizeLinear. Identical weights in several
bodies (onnxruntime's constant folding copies a captured weight into each body that reshapes
it) are stored once, in the innermost graph all their readers see.

Recurrent weights (num_directions, rows, K) get one scale per row of each direction: with one
direction the DQ's axis is 1; with two, the int8 tensor is stored (2 * rows, K) with a scale per
row on axis 0 and a Reshape restores the layout (DequantizeLinear takes a single axis).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.ops.recurrent import is_recurrent
from onnxquant.ops.rules import weight_axis
from onnxquant.passes.scopes import iter_scoped_nodes
from onnxquant.qparams import QuantDType, per_channel_absmax, quantize, symmetric

PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute


@dataclass(frozen=True)
class WeightOnly:
    """Weight inputs of one node to store int8; ``per_channel`` false: one scale per tensor."""

    inputs: tuple[int, ...]
    per_channel: bool = True
    reason: str = ""  # why the layer's compute stays float


@dataclass
class WeightOnlyResult:
    nodes: int = 0  # nodes whose weights were replaced
    tensors: int = 0  # float initializers stored int8
    float_bytes: int = 0  # bytes of the float weights replaced


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.used: set[str] = set()
        for graph in iter_graphs(model.graph):
            self.used.update(i.name for i in graph.initializer)
            self.used.update(v.name for v in [*graph.input, *graph.output])
            for node in graph.node:
                self.used.update([*node.input, *node.output, node.name])

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _layout(node: onnx.NodeProto, index: int, shape: tuple[int, ...], per_channel: bool,
            opset: int) -> tuple[tuple[int, ...], int | None]:
    """(shape the int8 tensor is stored in, its scale axis) for input ``index`` of ``node``."""
    if not per_channel or opset < PER_CHANNEL_OPSET:
        return shape, None
    if is_recurrent(node) and len(shape) == 3:
        return ((shape[0] * shape[1], shape[2]), 0) if shape[0] > 1 else (shape, 1)
    return shape, weight_axis(node, len(shape))


def _owner(scopes: list[tuple[str, onnx.GraphProto]], name: str) -> tuple[str, onnx.GraphProto] | None:
    """The innermost visible graph that holds ``name`` as an initializer."""
    for path, graph in reversed(scopes):
        if any(i.name == name for i in graph.initializer):
            return path, graph
    return None


def quantize_weights_only(model: onnx.ModelProto, targets: dict[str, WeightOnly], weight_type: QuantDType,
                          opset: int) -> WeightOnlyResult:
    """Rewrite ``model`` in place: the named nodes (qualified names, see ``scopes``) read int8 weights."""
    result = WeightOnlyResult()
    if not targets:
        return result
    names = _Names(model)
    stored: dict[tuple, list[str]] = {}  # (owner path, name, layout) -> int8, scale, zero point[, shape]
    by_content: dict[bytes, tuple] = {}  # identical weights (bodies often carry copies) are stored once
    home: dict[tuple, list[str]] = {}  # first key of some content -> scope paths down to where it is stored
    pending: dict[tuple, list[onnx.TensorProto]] = {}
    dq_of: dict[tuple, str] = {}
    front: dict[str, list[onnx.NodeProto]] = {}  # graph path -> DQ nodes to put first
    replaced: dict[str, set[str]] = {}  # graph path -> float initializers now stored int8
    for scoped in list(iter_scoped_nodes(model.graph)):
        target = targets.get(scoped.qualified)
        if target is None:
            continue
        node = scoped.node
        changed = False
        for index in target.inputs:
            name = node.input[index] if len(node.input) > index else ""
            found = _owner(scoped.scopes, name) if name else None
            if found is None:
                continue
            owner_path, owner = found
            init = next(i for i in owner.initializer if i.name == name)
            if init.data_type != onnx.TensorProto.FLOAT:
                continue
            shape = tuple(init.dims)
            stored_shape, axis = _layout(node, index, shape, target.per_channel, opset)
            key = (owner_path, name, stored_shape, axis)
            if key not in stored:
                value = tensor_array(init).reshape(stored_shape)
                chain = [path for path, _ in scoped.scopes]
                chain = chain[:chain.index(owner_path) + 1]
                digest = hashlib.sha256(repr((shape, stored_shape, axis)).encode() + value.tobytes()).digest()
                first = by_content.get(digest)
                if first is not None:
                    common = [a for a, b in zip(home[first], chain) if a == b]
                    home[first] = common  # a graph both readers see
                    stored[key] = stored[first]
                else:
                    absmax = per_channel_absmax(value, axis) if axis is not None else np.abs(value).max(initial=0.0)
                    params = symmetric(absmax, weight_type, axis)
                    tensors = [
                        numpy_helper.from_array(quantize(value, params), names.fresh(f"{name}_quantized")),
                        numpy_helper.from_array(np.asarray(params.scale, np.float32), names.fresh(f"{name}_scale")),
                        numpy_helper.from_array(np.asarray(params.zero_point), names.fresh(f"{name}_zero_point")),
                    ]
                    if stored_shape != shape:
                        tensors.append(numpy_helper.from_array(np.asarray(shape, np.int64), names.fresh(f"{name}_shape")))
                    by_content[digest], home[key], pending[key] = key, chain, tensors
                    stored[key] = [t.name for t in tensors]
                    result.tensors += 1
                replaced.setdefault(owner_path, set()).add(name)
                result.float_bytes += int(np.prod(shape)) * 4
            tensor_names = stored[key]
            dq_key = (scoped.graph_path, tuple(tensor_names))
            if dq_key not in dq_of:
                out = names.fresh(f"{name}_dequantized")
                dq_out = names.fresh(f"{name}_dequantized_rows") if len(tensor_names) == 4 else out
                nodes = [helper.make_node("DequantizeLinear", tensor_names[:3], [dq_out],
                                          name=names.fresh(f"{name}_DequantizeLinear"),
                                          **({"axis": axis} if axis is not None else {}))]
                if len(tensor_names) == 4:
                    nodes.append(helper.make_node("Reshape", [dq_out, tensor_names[3]], [out],
                                                  name=names.fresh(f"{name}_Reshape")))
                front.setdefault(scoped.graph_path, []).extend(nodes)
                dq_of[dq_key] = out
            node.input[index] = dq_of[dq_key]
            changed = True
        result.nodes += changed
    written: dict[str, list[onnx.TensorProto]] = {}
    for key, tensors in pending.items():
        written.setdefault(home[key][-1], []).extend(tensors)
    # Deepest graphs first, each looked up afresh: rewriting a graph's node list copies the
    # bodies it holds, so a graph fetched before its parent was rewritten would be stale.
    for path in sorted({*front, *replaced, *written}, key=lambda p: (-p.count("/"), p)):
        graph = _graph_at(model, path)
        graph.initializer.extend(written.get(path, []))
        if path in front:
            rest = list(graph.node)
            del graph.node[:]
            graph.node.extend(front[path] + rest)
        if path in replaced:
            _drop_unread(graph, replaced[path])
    return result


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


def _drop_unread(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove float initializers that no node of ``graph`` (or of its bodies) reads any more."""
    read = {o.name for o in graph.output}
    for sub in iter_graphs(graph):
        for node in sub.node:
            read.update(node.input)
    kept = [i for i in graph.initializer if i.name not in candidates or i.name in read]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
