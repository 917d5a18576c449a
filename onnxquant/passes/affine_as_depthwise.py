"""Rewrite a constant per-channel affine (``x * c + d``) between activations into a depthwise 1x1 Conv.

fold_affine.py folds such affines into a neighbouring Conv when that is exact. Where it is not
(PP-LCNetV3's "learnable affine blocks" sit after a hard-swish and before a padded depthwise
Conv), the Mul and Add by constants stay float in a quantized model: onnxruntime would run
DequantizeLinear -> Mul -> Add -> QuantizeLinear, two float passes and a round trip at full
activation resolution. A depthwise 1x1 Conv (weight c, bias d, one group per channel) computes
the same exactly, and onnxruntime runs it as one QLinearConv. Only 4-D activations whose channel
count is known, and, for a scalar constant, only where a reader is a convolution or a pool (a CNN
feature map, not attention scores), are rewritten; a constant shaped (1, C, 1, 1) is per channel
whatever reads it (Caffe2's BN-then-scale blocks, before a Relu).

A BatchNormalization that onnxruntime's simplifier could not fold into a Conv (DenseNet's and
Inception's pre-activation BN after a Concat, Caffe2-era exports) is the same affine,
``x * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps))`` on the channel axis of
a 4-D tensor by definition: it becomes a depthwise 1x1 Conv whatever reads it (before: DQ -> BN
-> Q around every one of them).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.fold_affine import _channel_vector
from onnxquant.passes.hardsigmoid_as_conv import _channels, _detached
from onnxquant.passes.names import fresh_name, inserted
from onnxquant.passes.node_index import NodeIndex

_FEATURE_MAP_READERS = {"Conv", "ConvTranspose", "GlobalAveragePool", "AveragePool", "MaxPool"}


def _constant_operand(node: onnx.NodeProto, index: NodeIndex) -> tuple[str, np.ndarray] | None:
    """(activation input, constant value) of a two-input Mul/Add with one float constant side."""
    if node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    a, b = node.input
    for act, const in ((a, b), (b, a)):
        init = index.inits.get(const)
        if init is not None and act not in index.inits and init.data_type == onnx.TensorProto.FLOAT:
            return act, tensor_array(init)
    return None


def rewrite_affines(model: onnx.ModelProto) -> int:
    """Rewrite in place; returns how many affines became depthwise Convs. Shape inference must
    have run (the channel count comes from recorded shapes)."""
    graph = model.graph
    index = NodeIndex(graph)
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output} \
        | set(index.inits) | {i.name for i in graph.input}
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for k, node in enumerate(index.nodes):
        if node.op_type == "BatchNormalization" and k not in replace:
            head = _affine_chain_head(node.input[0], index)
            affine = _batch_norm_affine(model, node, index)
            # (after a ConvTranspose, float on onnxruntime's CPU provider, a BN stays float: an int8
            # depthwise Conv there would add a Q/DQ pair, not take one away; PP-OCRv4 det's head)
            if affine is not None and (head is None or index.nodes[head].op_type != "ConvTranspose") \
                    and node.output[0] not in index.outputs:  # (an output gains no integer kernel)
                replace[k] = _depthwise(node, node.input[0], node.output[0], *affine, taken, new_inits, f"bn_{k}")
            continue
        if node.op_type not in ("Mul", "Add") or k in drop or k in replace:
            continue
        operand = _constant_operand(node, index)
        if operand is None:
            continue
        x, value = operand
        producer = _affine_chain_head(x, index)
        if producer is not None and (index.nodes[producer].op_type in ("Conv", "ConvTranspose") or producer in replace):
            continue  # fold_affine's job (or not exact there); not ours to duplicate (a BN made a Conv here too)
        shape = _channels(model, x)
        if shape is None or shape[1] != 4:
            continue
        channels = shape[0]
        vector = _channel_vector(value, channels, 4)
        if vector is None:
            continue
        scale, shift = (vector, np.zeros(channels)) if node.op_type == "Mul" else (np.ones(channels), vector)
        last, out = k, node.output[0]
        if node.op_type == "Mul":
            nxt = index.only_reader(out, "Add")
            follow = _constant_operand(index.nodes[nxt], index) if nxt is not None else None
            shift_vector = _channel_vector(follow[1], channels, 4) if follow is not None and follow[0] == out else None
            if shift_vector is not None:
                shift, last, out = shift_vector, nxt, index.nodes[nxt].output[0]
        if out in index.outputs:
            continue  # an exact float affine writing an output (a de-normalisation) gains no integer kernel
        readers = {index.nodes[r].op_type for r in index.readers.get(out, [])}
        if value.size == 1 and not readers & _FEATURE_MAP_READERS:
            continue  # (a scalar could scale anything 4-D; a (1, C, 1, 1) vector is per channel by its shape)
        replace[k] = _depthwise(node, x, out, scale, shift, taken, new_inits, f"affine_{k}")
        if last != k:
            drop.add(last)
    if not replace:
        return 0
    nodes = [_detached(replace.get(k, n)) for k, n in enumerate(index.nodes) if k not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return len(replace)


def _affine_chain_head(x: str, index: NodeIndex) -> int | None:
    """The producer of ``x``, looking back through Mul/Add by constants (a chain fold_affine takes whole)."""
    producer = index.producer.get(x)
    while producer is not None and index.nodes[producer].op_type in ("Mul", "Add"):
        operand = _constant_operand(index.nodes[producer], index)
        if operand is None:
            break
        producer = index.producer.get(operand[0])
    return producer


def _depthwise(node: onnx.NodeProto, x: str, out: str, scale: np.ndarray, shift: np.ndarray, taken: set[str],
               new_inits: list[onnx.TensorProto], fallback: str) -> onnx.NodeProto:
    """A depthwise 1x1 Conv computing ``x * scale + shift`` per channel (its weight and bias added
    to ``new_inits``)."""
    base = node.name or fallback
    channels = len(scale)
    w_name, b_name = fresh_name(taken, f"{base}_dw_weight"), fresh_name(taken, f"{base}_dw_bias")
    new_inits += [numpy_helper.from_array(scale.astype(np.float32).reshape(channels, 1, 1, 1), w_name),
                  numpy_helper.from_array(shift.astype(np.float32), b_name)]
    return inserted(helper.make_node("Conv", [x, w_name, b_name], [out], name=fresh_name(taken, f"{base}_dw"),
                                     group=channels, kernel_shape=[1, 1]))


def _batch_norm_affine(model: onnx.ModelProto, node: onnx.NodeProto,
                       index: NodeIndex) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of an inference BatchNormalization on a 4-D tensor with constant statistics."""
    if node.domain not in ("", "ai.onnx") or len(node.input) != 5 or len(node.output) != 1:
        return None
    params = [index.inits.get(name) for name in node.input[1:]]
    if any(p is None or p.data_type != onnx.TensorProto.FLOAT for p in params):
        return None
    shape = _channels(model, node.input[0])
    gamma, beta, mean, var = (tensor_array(p).astype(np.float64).reshape(-1) for p in params)  # type: ignore[union-attr]
    if shape is None or shape[1] != 4 or not all(len(v) == shape[0] for v in (gamma, beta, mean, var)):
        return None
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    if any(a.name == "training_mode" and a.i for a in node.attribute):
        return None
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale
