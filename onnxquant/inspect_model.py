"""What a model is made of: ops, parameters, which layers run quantized, sparsity, size.

Read from the file alone (no data, no session), so ``onnxquant inspect`` works on any model,
compressed by us or not. A weighted layer is *int8* when its weight reaches it through a
DequantizeLinear of an 8-bit tensor or it is an integer kernel (QLinearConv, MatMulInteger...),
*int4* for 4-bit weights (MatMulNBits, int4 DequantizeLinear), else *float*.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxquant.results import FLOAT_COMPUTE_KEY
from onnxquant.float_weights import (
    FLOAT_LAYERS_KEY,
    attribute_parameter_bytes,
    attribute_parameter_counts,
    float_weighted_nodes,
    tensor_bytes,
    weight_bytes,
)
from onnxquant.model_io import (
    file_size,
    has_lazy,
    iter_graphs,
    load_model,
    model_size,
    serialize,
    tensor_array,
)
from onnxquant.passes.names import INSERTED_DOC
from onnxquant.prune.storage import compressed_size

# Ops whose second input (B for MatMulNBits: the first packed input) is a learned weight.
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0,
                "QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1,
                "MatMulNBits": 1, "QGemm": 3, "DynamicQuantizeMatMul": 1,
                "LSTM": 1, "GRU": 1, "RNN": 1, "DynamicQuantizeLSTM": 1, "Attention": 1, "QAttention": 1}
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                   "DynamicQuantizeLSTM", "QAttention"}
# Recurrent ops carry a second weight, the recurrence R (input 2), stored like W; their bias does
# not decide their precision.
RECURRENT_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
# Ops between a DequantizeLinear and the layer that leave the values as they are (a recurrent
# weight is stored flat per direction and reshaped back after it is dequantized).
_LAYOUT_OPS = {"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze"}


def _source(name: str, producer: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node that makes ``name``, looking through layout-only ops."""
    node = producer.get(name)
    while node is not None and node.op_type in _LAYOUT_OPS and node.input:
        node = producer.get(node.input[0])
    return node


def _cast_integers(mul: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                   tensors: dict[str, onnx.TensorProto]) -> str | None:
    """The int8 initializer a float-compute weight is made from (``Mul(Cast(int8 weight), scale)``,
    as pipeline/float_compute.py writes it), or None: such a layer stores int8 weights."""
    if mul.op_type != "Mul":
        return None
    for value in mul.input:
        cast = producer.get(value)
        if cast is not None and cast.op_type == "Cast" and cast.input and cast.input[0] in tensors \
                and tensors[cast.input[0]].data_type in _INT8:
            return cast.input[0]
    return None


_INT4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16}


@dataclass
class LayerInfo:
    """One weighted node: its weight tensor, precision, parameter count and sparsity."""

    node: str
    op_type: str
    weight: str
    precision: str  # "float", "int8", "int4"
    parameters: int
    zeros: int
    float_bytes: int = 0  # bytes of the float weights it is the first reader of (0 for quantized layers)
    reason: str | None = None  # why a float layer stayed float, when the model says (onnxquant writes it)
    shared: bool = False  # an earlier layer reads the same weight: totals count it there, once
    inserted: bool = False  # a layer onnxquant's rewrites wrote where the input had none (passes.names.INSERTED_DOC)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "weight": self.weight, "precision": self.precision,
                "parameters": self.parameters, "sparsity": round(self.sparsity, 4),
                **({"reason": self.reason} if self.reason is not None else {}),
                **({"shared": True} if self.shared else {}),
                **({"inserted": True} if self.inserted else {})}


@dataclass
class ModelInspection:
    path: str
    size: int  # serialized bytes (plus external data files)
    size_deflated: int | None  # zlib level 9, as in a zip bundle
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_counts: dict[str, int]
    parameters: dict[str, int]  # element count by stored data type
    layers: list[LayerInfo] = field(default_factory=list)
    made_by: str | None = None  # the onnxquant version stamped in metadata, if any
    weight_bytes: int = 0  # every initializer, every (sub)graph
    # int8-stored weights computed in float, and why (the quantize stamp; None: not such a model)
    float_compute: dict[str, Any] | None = None

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def precision_counts(self) -> dict[str, dict[str, int]]:
        """precision -> {"layers": n, "parameters": n}."""
        out: dict[str, dict[str, int]] = {}
        for layer in self.layers:
            entry = out.setdefault(layer.precision, {"layers": 0, "parameters": 0})
            entry["layers"] += 1
            entry["parameters"] += 0 if layer.shared else layer.parameters
        return dict(sorted(out.items()))

    def inserted_counts(self) -> dict[str, int]:
        """op type -> how many of the weighted layers onnxquant's rewrites inserted (gate and
        affine depthwise Convs): layers the input model did not have."""
        return dict(sorted(Counter(layer.op_type for layer in self.layers if layer.inserted).items()))

    def float_weight_share(self) -> float:
        """The share of all initializer bytes that float layers read."""
        total = self.weight_bytes
        return sum(layer.float_bytes for layer in self.layers) / total if total else 0.0

    def sparsity(self) -> float:
        owned = [layer for layer in self.layers if not layer.shared]
        total = sum(layer.parameters for layer in owned)
        return sum(layer.zeros for layer in owned) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "size": self.size, "size_deflated": self.size_deflated,
            "ir_version": self.ir_version, "opsets": self.opsets, "producer": self.producer, "made_by": self.made_by,
            "inputs": self.inputs, "outputs": self.outputs, "op_counts": self.op_counts,
            "parameters": self.parameters, "total_parameters": self.total_parameters,
            "precision": self.precision_counts(), "inserted_layers": self.inserted_counts(),
            "sparsity": round(self.sparsity(), 4),
            "float_weight_share": round(self.float_weight_share(), 4),
            "layers": [layer.to_dict() for layer in self.layers],
            **({"float_compute": self.float_compute} if self.float_compute is not None else {}),
        }


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """Name, type and shape; a sequence, map or optional (a ZipMap's probabilities) has no shape
    (None) and its type spelled out, not a tensor's empty one."""
    if value.type.WhichOneof("value") != "tensor_type":
        return {"name": value.name, "dtype": _type_name(value.type), "shape": None}
    t = value.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return {"name": value.name, "dtype": _type_name(value.type), "shape": dims}


def _type_name(t: onnx.TypeProto) -> str:
    """``float32``, ``string``, ``seq(map(int64, float32))``...; ``?`` where the model does not say."""
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        name = _elem_name(getattr(t, kind).elem_type)
        return name if kind == "tensor_type" else f"sparse({name})"
    if kind == "sequence_type":
        return f"seq({_type_name(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_name(t.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({_elem_name(t.map_type.key_type)}, {_type_name(t.map_type.value_type)})"
    return "?"


def _elem_name(elem: int) -> str:
    """numpy's name for a tensor element type, ``string`` for text (numpy's would be ``object``)."""
    if not elem:
        return "?"
    return "string" if elem == onnx.TensorProto.STRING else onnx.helper.tensor_dtype_to_np_dtype(elem).name


def _dtype_name(data_type: int) -> str:
    return onnx.TensorProto.DataType.Name(data_type).lower()


class _Weights:
    """Initializers and Constant outputs by name, decoded lazily (only the weights we look at)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.tensors = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                self.tensors[node.output[0]] = node.attribute[0].t

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.tensors.get(name)
        if tensor is None:
            return None
        try:
            return tensor_array(tensor)
        except (ValueError, TypeError, OSError):  # undecodable: the layer counts, without sparsity
            return None


def _layers(graph: onnx.GraphProto) -> list[LayerInfo]:
    weights = _Weights(graph)
    producer = {o: n for n in graph.node for o in n.output}
    layers = []
    seen: set[str] = set()  # weights an earlier layer reads (tied embeddings, one weight for two MatMuls)
    for node in graph.node:
        slot = WEIGHTED_OPS.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        name = node.input[slot]
        source = _source(name, producer)
        zero_point = None
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in weights.tensors:
            tensor = weights.tensors[source.input[0]]
            precision = "int4" if tensor.data_type in _INT4 else "int8" if tensor.data_type in _INT8 else "float"
            name = source.input[0]
            if len(source.input) > 2 and source.input[2]:
                zero_point = weights.array(source.input[2])
        elif source is not None and (stored := _cast_integers(source, producer, weights.tensors)) is not None:
            tensor, precision, name = weights.tensors[stored], "int8", stored  # float compute: int8 stored, folded at load
        elif name in weights.tensors:
            tensor = weights.tensors[name]
            if node.op_type == "MatMulNBits":
                precision = "int4"
            elif node.op_type in INTEGER_KERNELS:
                precision = "int8"
            else:
                precision = "float" if tensor.data_type not in _INT8 | _INT4 else "int8"
        else:
            continue  # an activation times an activation (attention scores): no weight
        if node.op_type == "Gather" and precision == "float" and tensor.data_type != onnx.TensorProto.FLOAT:
            continue  # Gather of an int64 index table is not an embedding
        values = weights.array(name)
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if node.op_type in RECURRENT_OPS and len(node.input) > 2:
            recurrence = _source(node.input[2], producer)
            if recurrence is not None and recurrence.op_type == "DequantizeLinear":
                r_name = recurrence.input[0]
            elif recurrence is not None and (stored := _cast_integers(recurrence, producer, weights.tensors)):
                r_name = stored  # float compute (recurrent_integer = false): R is Mul(Cast(int8), scale) too
            else:
                r_name = node.input[2]
            if r_name in weights.tensors:
                count += int(np.prod(weights.tensors[r_name].dims))
        if node.op_type == "MatMulNBits":
            count = _nbits_parameters(node)
        zeros = 0
        if values is not None and node.op_type != "MatMulNBits":
            zeros = _zeros(values, zero_point, node, source)
        shared = name in seen
        seen.add(name)
        float_bytes = tensor_bytes(tensor) if precision == "float" and not shared else 0
        layers.append(LayerInfo(node.name, node.op_type, name, precision, count, zeros, float_bytes, shared=shared,
                                inserted=node.doc_string == INSERTED_DOC))
    return layers


def _all_layers(proto: onnx.ModelProto) -> list[LayerInfo]:
    """The weighted layers of known op types, then any other node (subgraphs included) that reads a
    float weight; with the reasons onnxquant stamped for the float ones."""
    layers = _layers(proto.graph)
    known = {layer.node for layer in layers}
    seen = {layer.weight for layer in layers}
    for found in float_weighted_nodes(proto):
        if found.node in known or not found.weights:
            continue
        fresh = [w for w in found.weights if w.name not in seen]
        seen.update(w.name for w in found.weights)
        first = found.weights[0]
        values = None
        try:
            values = tensor_array(first)
        except (ValueError, TypeError, OSError):
            pass
        count = sum(int(np.prod(w.dims)) if w.dims else 1 for w in found.weights)
        zeros = int(np.count_nonzero(values == 0)) if values is not None and len(found.weights) == 1 else 0
        layers.append(LayerInfo(found.node, found.op_type, first.name, "float", count, zeros,
                                sum(tensor_bytes(w) for w in fresh), shared=not fresh))
    for graph in iter_graphs(proto.graph):  # ai.onnx.ml: tree ensembles' and SVMs' float parameters are attributes
        for node in graph.node:
            count = sum(attribute_parameter_counts(node).values())
            if count:
                layers.append(LayerInfo(node.name, node.op_type, "(attributes)", "float", count, 0,
                                        attribute_parameter_bytes(node)))
    meta = {p.key: p.value for p in proto.metadata_props}
    reasons = {}
    if FLOAT_LAYERS_KEY in meta:
        try:
            reasons = {e["node"]: e["reason"] for e in json.loads(meta[FLOAT_LAYERS_KEY])}
        except (ValueError, KeyError, TypeError):
            reasons = {}
    for layer in layers:
        if layer.precision == "float" and layer.node in reasons:
            layer.reason = reasons[layer.node]
    return layers


def _nbits_parameters(node: onnx.NodeProto) -> int:
    attrs = {a.name: a.i for a in node.attribute}
    return int(attrs.get("K", 0) * attrs.get("N", 0))


def _zeros(values: np.ndarray, zero_point: np.ndarray | None, node: onnx.NodeProto, dq: onnx.NodeProto | None) -> int:
    """Weights that are exactly zero: for quantized weights, the ones stored as their zero point."""
    if zero_point is None or zero_point.size == 1:
        zp = 0 if zero_point is None else zero_point.reshape(())
        return int(np.count_nonzero(values == zp))
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) if dq is not None else 0
    shape = [1] * values.ndim
    shape[axis % values.ndim] = -1
    return int(np.count_nonzero(values == zero_point.reshape(shape)))


def inspect_model(model: str | os.PathLike | onnx.ModelProto) -> ModelInspection:
    """Everything ``onnxquant inspect`` shows, from the model file (or proto) alone."""
    if isinstance(model, onnx.ModelProto):
        proto, path, size = model, "", None
    else:
        path = str(model)
        proto = load_model(model)
        size = file_size(Path(model), proto)
    # Weights left on disk are not in the serialization: its deflated size would mean nothing.
    payload = serialize(proto) if proto.ByteSize() < 2**31 - 1 and not has_lazy(proto) else None
    if size is None:
        size = len(payload) if payload is not None else model_size(proto)
    ops: Counter[str] = Counter()
    params: Counter[str] = Counter()
    for graph in iter_graphs(proto.graph):
        ops.update(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node)
        for tensor in graph.initializer:
            params[_dtype_name(tensor.data_type)] += int(np.prod(tensor.dims)) if tensor.dims else 1
        for node in graph.node:
            for data_type, count in attribute_parameter_counts(node).items():
                params[_dtype_name(data_type)] += count
    meta = {p.key: p.value for p in proto.metadata_props}
    return ModelInspection(
        path=path, size=size, size_deflated=compressed_size(payload) if payload is not None else None,
        ir_version=proto.ir_version, opsets={o.domain or "ai.onnx": o.version for o in proto.opset_import},
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        inputs=[_value_info(v) for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}],
        outputs=[_value_info(v) for v in proto.graph.output],
        op_counts=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        parameters=dict(sorted(params.items())), layers=_all_layers(proto), made_by=meta.get("onnxquant.version"),
        weight_bytes=weight_bytes(proto),
        float_compute=json.loads(meta[FLOAT_COMPUTE_KEY]) if FLOAT_COMPUTE_KEY in meta else None,
    )
