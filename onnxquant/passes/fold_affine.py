"""Fold constant Mul/Add next to a Conv (or after a ConvTranspose) into its weights and bias (exactly).

Exporters leave per-channel or scalar affines around convolutions (Paddle's "learnable affine
blocks", un-fused normalisations). Left in place they are float ops between integer kernels,
each costing a dequantize/quantize round trip at full activation resolution. Folded, they cost
nothing. Only rewrites that are exact in real arithmetic are made:
- after a Conv: ``Conv(x) * c + d`` for c, d broadcast per output channel;
- before a Conv: ``Conv(x * c)`` for c scalar or per input channel (zero padding stays zero);
  ``Conv(x + d)`` only when the Conv has no padding (a padded border would see d otherwise);
- after a ConvTranspose: ``ConvTranspose(x) * c + d`` per output channel, and a
  BatchNormalization (``x * s + t``, inference mode). onnxruntime's simplifier folds neither into
  a ConvTranspose, and no integer kernel runs a ConvTranspose: PP-OCR det's head ran its bias Add
  and BatchNormalization as float ops over 24 x 240 x 320 values (1.2 ms of 45 as int8).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.int8_pad import _read_in_bodies
from onnxquant.passes.node_index import attributes


def _channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a (channels,) vector if it broadcasts per channel on axis 1 of a rank-``rank`` tensor."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=np.float64)
    if shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1):
        return value.reshape(channels).astype(np.float64)
    return None


class _Index:
    """Producers and readers of each tensor, as positions in the node list, kept up to date as
    folds remove nodes: the pass visits each node a bounded number of times (linear)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.inits = {i.name: i for i in graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for k, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = k
            for name in node.input:
                self.consumers.setdefault(name, []).append(k)
        # a value an If/Loop/Scan body reads counts as an output: it must keep its name and value
        self.outputs = {o.name for o in graph.output} | _read_in_bodies(graph)
        self.removed: set[int] = set()

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            return None
        return tensor_array(init)

    def only_consumer(self, tensor: str) -> int | None:
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def remove(self, k: int) -> None:
        node = self.nodes[k]
        self.removed.add(k)
        for name in node.input:
            readers = self.consumers.get(name, [])
            if k in readers:
                readers.remove(k)
        for name in node.output:
            if self.producer.get(name) == k:
                del self.producer[name]


def _conv_params(node: onnx.NodeProto, idx: _Index) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    w = idx.const(node.input[1])
    if w is None or w.ndim < 3:
        return None
    b = idx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(_out_channels(node, w),
                                                                                         np.float32)
    if b is None:
        return None
    return w.astype(np.float64), b.astype(np.float64)


def _out_channels(conv: onnx.NodeProto, w: np.ndarray) -> int:
    """A Conv's weight is (C_out, C_in/group, k...), a ConvTranspose's (C_in, C_out/group, k...)."""
    return w.shape[0] if conv.op_type == "Conv" else w.shape[1] * attributes(conv).get("group", 1)


def _scale_outputs(conv: onnx.NodeProto, w: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``w`` with output channel o scaled by ``vec[o]``."""
    if conv.op_type == "Conv":
        return w * vec.reshape((-1,) + (1,) * (w.ndim - 1))
    group = attributes(conv).get("group", 1)
    grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])  # (g, C_in/g, C_out/g, k...)
    scale = vec.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
    return (grouped * scale).reshape(w.shape)


def _batch_norm(node: onnx.NodeProto, idx: _Index) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(input, scale, shift) of an inference-mode BatchNormalization with constant parameters."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.input) != 5 \
            or len([o for o in node.output if o]) != 1:
        return None
    attrs = attributes(node)
    if attrs.get("training_mode", 0) or attrs.get("spatial", 1) != 1:
        return None
    params = [idx.const(name) for name in node.input[1:]]
    if any(p is None or p.ndim != 1 for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    return node.input[0], scale, beta - mean * scale


def _split_const(node: onnx.NodeProto, idx: _Index) -> tuple[str, np.ndarray] | None:
    """(activation input, constant) of a binary Mul/Add with exactly one constant operand."""
    if node.op_type not in ("Mul", "Add") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    a, b = node.input
    if idx.const(b) is not None and idx.const(a) is None:
        return a, idx.const(b)
    if idx.const(a) is not None and idx.const(b) is None:
        return b, idx.const(a)
    return None


def _has_padding(conv: onnx.NodeProto) -> bool:
    attrs = attributes(conv)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return True
    return any(p != 0 for p in attrs.get("pads", []))


def _fold_after(k: int, w: np.ndarray, b: np.ndarray, graph: onnx.GraphProto, idx: _Index) -> bool:
    """``Conv(x) * c`` or ``Conv(x) + d`` folded into conv ``k``."""
    conv = idx.nodes[k]
    after = idx.only_consumer(conv.output[0])
    if after is None:
        return False
    nxt = idx.nodes[after]
    channels = _out_channels(conv, w)
    norm = _batch_norm(nxt, idx) if conv.op_type == "ConvTranspose" else None
    if norm is not None:
        if norm[0] != conv.output[0] or norm[1].size != channels:
            return False
        w, b = _scale_outputs(conv, w, norm[1]), b * norm[1] + norm[2]
    else:
        split = _split_const(nxt, idx)
        if split is None or split[0] != conv.output[0]:
            return False
        vec = _channel_vector(split[1], channels, w.ndim)
        if vec is None:
            return False
        if nxt.op_type == "Mul":
            w = _scale_outputs(conv, w, vec)
            b = b * vec
        else:
            b = b + vec
    old_out, new_out = conv.output[0], nxt.output[0]
    idx.remove(after)
    idx.consumers.pop(old_out, None)
    idx.producer.pop(old_out, None)
    _commit(graph, conv, w, b, idx, out=new_out)
    idx.producer[new_out] = k
    return True


def _fold_before(k: int, w: np.ndarray, b: np.ndarray, graph: onnx.GraphProto, idx: _Index) -> bool:
    """``Conv(x * c)`` (or, unpadded, ``Conv(x + d)``) folded into conv ``k``."""
    conv = idx.nodes[k]
    if conv.op_type != "Conv":
        return False
    src = conv.input[0]
    before = idx.producer.get(src)
    if before is None or idx.only_consumer(src) != k:
        return False
    prev = idx.nodes[before]
    split = _split_const(prev, idx)
    if split is None:
        return False
    group = attributes(conv).get("group", 1)
    in_channels = w.shape[1] * group
    vec = _channel_vector(split[1], in_channels, w.ndim)
    if vec is None:
        return False
    per_group = vec.reshape(group, w.shape[1])  # input channels seen by each group
    out_per_group = w.shape[0] // group
    if prev.op_type == "Mul":
        scale = np.repeat(per_group, out_per_group, axis=0)  # (C_out, C_in/group)
        w = w * scale.reshape(scale.shape + (1,) * (w.ndim - 2))
    else:
        if _has_padding(conv):
            return False
        shift = np.repeat(per_group, out_per_group, axis=0)
        b = b + (w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) * shift).sum(axis=1)
    new_input = split[0]
    idx.remove(before)
    idx.consumers.pop(src, None)
    idx.consumers.setdefault(new_input, []).append(k)
    _commit(graph, conv, w, b, idx, new_input=new_input)
    return True


def _commit(graph: onnx.GraphProto, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray, idx: _Index,
            out: str | None = None, new_input: str | None = None) -> None:
    w_name = f"{conv.input[1]}_folded"
    b_name = f"{conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + '_bias'}_folded"
    while w_name in idx.inits or b_name in idx.inits:
        w_name, b_name = w_name + "_", b_name + "_"
    for array, name in ((w, w_name), (b, b_name)):
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        idx.inits[name] = graph.initializer[-1]
    inputs = list(conv.input)
    inputs[1] = w_name
    if len(inputs) > 2:
        inputs[2] = b_name
    else:
        inputs.append(b_name)
    if new_input is not None:
        inputs[0] = new_input
    del conv.input[:]
    conv.input.extend(inputs)
    if out is not None:
        conv.output[0] = out


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | _read_in_bodies(graph)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fold_affine_into_conv(model: onnx.ModelProto, limit: int | None = None) -> int:
    """Fold in place, each Conv in graph order absorbing the Mul/Add chain around it; returns
    the number of Mul/Add nodes removed (at most ``limit``). Linear in the number of nodes."""
    graph = model.graph
    idx = _Index(graph)
    folded = 0
    for k, conv in enumerate(idx.nodes):
        while (limit is None or folded < limit) and k not in idx.removed:
            params = _conv_params(conv, idx)
            if params is None or not (_fold_after(k, *params, graph, idx) or _fold_before(k, *params, graph, idx)):
                break
            folded += 1
    if folded:
        kept = [n for k, n in enumerate(idx.nodes) if k not in idx.removed]
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_initializers(graph)
    return folded
