"""Which nodes still compute with float weights, and what share of the model's weight bytes that is.

Generic on purpose: any node, of any op type, in the main graph or inside an If/Loop/Scan body,
that reads a float initializer of a weight's size is a float weighted layer. A list of known
op types would miss the next one (an LSTM, a custom op, a layer inside a branch), and a layer
missed here is float in silence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
# A float tensor is a weight (not a bias, scale or shape constant) with at least this many values,
# or with two or more dimensions longer than one (a matrix, however small).
MIN_WEIGHT_VALUES = 1024
# Ops that only carry quantized weights to their readers.
_CARRIERS = {"QuantizeLinear", "DequantizeLinear", "Identity", "Cast"}
# The share of the weight bytes that may stay float before the summary warns.
WARN_FLOAT_SHARE = 0.10


# Model metadata: the float weighted layers and why they stayed float (JSON), for ``inspect``.
FLOAT_LAYERS_KEY = "onnxquant.float_layers"


@dataclass
class FloatWeighted:
    node: str
    op_type: str
    weight_bytes: int  # of the weights it is the first reader of
    in_subgraph: bool
    weights: tuple[onnx.TensorProto, ...] = ()  # every float weight it reads
    in_attributes: bool = False  # its parameters are attributes (ai.onnx.ml: tree ensembles, SVMs...)

def tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize \
        if tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) else 0


def is_float_weight(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type not in FLOAT_TYPES:
        return False
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count >= MIN_WEIGHT_VALUES or sum(1 for d in tensor.dims if d > 1) >= 2


# Domain of the classic-ML ops (skl2onnx, onnxmltools) that hold their parameters as attributes.
ML_DOMAIN = "ai.onnx.ml"


def attribute_parameter_counts(node: onnx.NodeProto) -> dict[int, int]:
    """Float parameters an ai.onnx.ml node holds as attributes, counted by ONNX data type (FLOATS
    attributes are float32): what ``inspect`` counts beside the initializers."""
    counts: dict[int, int] = {}
    if node.domain != ML_DOMAIN:
        return counts
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.FLOATS and attr.floats:
            counts[onnx.TensorProto.FLOAT] = counts.get(onnx.TensorProto.FLOAT, 0) + len(attr.floats)
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
            count = int(np.prod(attr.t.dims)) if attr.t.dims else 1
            counts[attr.t.data_type] = counts.get(attr.t.data_type, 0) + count
    return counts


def attribute_parameter_bytes(node: onnx.NodeProto) -> int:
    """Bytes of the float parameters an ai.onnx.ml node holds as attributes (a tree ensemble's
    thresholds and leaf values, an SVM's support vectors): weights that no initializer shows."""
    if node.domain != ML_DOMAIN:
        return 0
    total = 0
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.FLOATS:
            total += 4 * len(attr.floats)
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
            total += tensor_bytes(attr.t)
    return total


def weight_bytes(model: onnx.ModelProto, stored_half: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """Bytes of every initializer of the model, in every (sub)graph, and of the ai.onnx.ml nodes'
    attribute parameters: the denominator of shares.
    ``stored_half``: float initializers the model file stores in fp16 (counted at 2 bytes a value)."""
    return sum(tensor_bytes(t) // (2 if t.name in stored_half and t.data_type == onnx.TensorProto.FLOAT else 1)
               for t in _initializers(model.graph)) + sum(attribute_parameter_bytes(n) for n in _nodes(model.graph))


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in _bodies(node):
            yield from _nodes(sub)


def _initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for sub in _bodies(node):
            yield from _initializers(sub)


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def _dequantizes(node: onnx.NodeProto, scope: dict[str, onnx.TensorProto]) -> bool:
    """A Mul of an integer weight (read through a Cast) by its scales: the dequantization that
    weight-only layers are stored with (``passes/weight_only.py``, ``WeightOnly.fold``)."""
    return node.op_type == "Mul" and any(name in scope and scope[name].data_type not in FLOAT_TYPES
                                         for name in node.input)


def float_weighted_nodes(model: onnx.ModelProto) -> list[FloatWeighted]:
    """Every node that reads a float weight (its own graph's or an enclosing graph's), or holds float
    parameters as ai.onnx.ml attributes, in graph order.

    A weight read by several nodes counts once, for the first of them.
    """
    found: list[FloatWeighted] = []
    counted: set[int] = set()

    def walk(graph: onnx.GraphProto, visible: dict[str, onnx.TensorProto], nested: bool) -> None:
        scope = {**visible, **{i.name: i for i in graph.initializer}}
        for node in graph.node:
            if node.op_type == "Cast" and node.input and node.input[0] in scope:
                scope[node.output[0]] = scope[node.input[0]]  # a weight stored fp16, read as fp32
            in_attributes = attribute_parameter_bytes(node)
            if in_attributes:
                found.append(FloatWeighted(node.name, node.op_type, in_attributes, nested, (), True))
            elif _dequantizes(node, scope):
                continue  # Cast(int8) * scale: an int8 weight's scales (one per channel) are no float weight
            elif node.op_type not in _CARRIERS:
                weights = [scope[name] for name in dict.fromkeys(node.input) if name in scope
                           and is_float_weight(scope[name])]
                fresh = [w for w in weights if id(w) not in counted]
                if weights:
                    counted.update(id(w) for w in fresh)
                    found.append(FloatWeighted(node.name, node.op_type, sum(tensor_bytes(w) for w in fresh), nested,
                                               tuple(weights)))
            for sub in _bodies(node):
                walk(sub, scope, True)

    walk(model.graph, {}, False)
    return found
