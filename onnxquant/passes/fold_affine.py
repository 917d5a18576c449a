"""Fold constant Mul/Add next to a Conv into the Conv's weights and bias (exactly).

Exporters leave per-channel or scalar affines around convolutions (Paddle's "learnable affine
blocks", un-fused normalisations). Left in place they are float ops between integer kernels,
each costing a dequantize/quantize round trip at full activation resolution. Folded, they cost
nothing. Only rewrites that are exact in real arithmetic are made:
- after a Conv: ``Conv(x) * c + d`` for c, d broadcast per output channel;
- before a Conv: ``Conv(x * c)`` for c scalar or per input channel (zero padding stays zero);
  ``Conv(x + d)`` only when the Conv has no padding (a padded border would see d otherwise).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
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
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits = {i.name: i for i in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            return None
        return tensor_array(init)

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None


def _conv_params(node: onnx.NodeProto, idx: _Index) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    w = idx.const(node.input[1])
    if w is None or w.ndim < 3:
        return None
    b = idx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
    if b is None:
        return None
    return w.astype(np.float64), b.astype(np.float64)


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


def _fold_once(model: onnx.ModelProto) -> bool:
    graph = model.graph
    idx = _Index(graph)
    for conv in graph.node:
        params = _conv_params(conv, idx)
        if params is None:
            continue
        w, b = params
        group = attributes(conv).get("group", 1)
        # After the conv.
        nxt = idx.only_consumer(conv.output[0])
        split = _split_const(nxt, idx) if nxt is not None else None
        if split is not None:
            vec = _channel_vector(split[1], w.shape[0], w.ndim)
            if vec is not None and split[0] == conv.output[0]:
                if nxt.op_type == "Mul":
                    w = w * vec.reshape((-1,) + (1,) * (w.ndim - 1))
                    b = b * vec
                else:
                    b = b + vec
                _commit(graph, conv, w, b, idx, out=nxt.output[0], drop=nxt)
                return True
        # Before the conv.
        src = conv.input[0]
        prev = next((n for n in graph.node if src in n.output), None)
        if prev is None or idx.only_consumer(src) is not conv:
            continue
        split = _split_const(prev, idx)
        if split is None:
            continue
        in_channels = w.shape[1] * group
        vec = _channel_vector(split[1], in_channels, w.ndim)
        if vec is None:
            continue
        per_group = vec.reshape(group, w.shape[1])  # input channels seen by each group
        out_per_group = w.shape[0] // group
        if prev.op_type == "Mul":
            scale = np.repeat(per_group, out_per_group, axis=0)  # (C_out, C_in/group)
            w = w * scale.reshape(scale.shape + (1,) * (w.ndim - 2))
        else:
            if _has_padding(conv):
                continue
            shift = np.repeat(per_group, out_per_group, axis=0)
            b = b + (w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) * shift).sum(axis=1)
        _commit(graph, conv, w, b, idx, new_input=split[0], drop=prev)
        return True
    return False


def _commit(graph: onnx.GraphProto, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray, idx: _Index,
            out: str | None = None, new_input: str | None = None, drop: onnx.NodeProto | None = None) -> None:
    w_name = f"{conv.input[1]}_folded"
    b_name = f"{conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + '_bias'}_folded"
    while w_name in idx.inits or b_name in idx.inits:
        w_name, b_name = w_name + "_", b_name + "_"
    graph.initializer.extend([
        numpy_helper.from_array(w.astype(np.float32), w_name),
        numpy_helper.from_array(b.astype(np.float32), b_name),
    ])
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
    if drop is not None:
        graph.node.remove(drop)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fold_affine_into_conv(model: onnx.ModelProto, limit: int = 10000) -> int:
    """Fold in place until nothing changes; returns the number of Mul/Add nodes removed."""
    folded = 0
    while folded < limit and _fold_once(model):
        folded += 1
    if folded:
        _drop_unused_initializers(model.graph)
    return folded
