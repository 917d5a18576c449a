"""Pass ``compact``: the written model without bytes onnxruntime does not need, computing the same.

On a small model the graph is a large share of the file: in PP-OCR's direction classifier
(float compute on int8 weights) the names of the nodes and tensors onnxquant inserted
(``ConvBnFusion_W_conv1_weights_int8_as_float``...) were 0.043 of the fp32 file, the recorded
shapes 0.014, next to int8 weights of 0.216. Three things go:

- ``value_info``: shapes onnxruntime infers again when it loads the model. Kept where a node of
  a domain onnxruntime may have no schema for writes the value, and where a Reshape to a
  computed shape writes 8-bit integers: onnxruntime cannot infer that rank, and without it its
  layout optimizer leaves Transposes around the ops after (``int8_upsample`` records such ranks;
  float Reshapes, the input model's own, are left as before).
- identical scales and zero points onnxquant wrote (read by QuantizeLinear/DequantizeLinear
  only), stored once per graph. Integer weights are not shared even where equal (the gate
  Convs' one-value weights): the fusion check counts layers by their weight tensor.
- the long names onnxquant gave what it inserted (Q/DQ, Cast, Mul, scales, zero points, int8
  weights) become short ones (``t1a``, ``n2f``). The input model's own names, the graph's
  inputs and outputs, and every name a report mentions (``keep``) are left as they are.
- attributes of convolutions, poolings and Pad written with their ONNX default value
  (``dilations`` all 1, ``group`` 1, ``auto_pad`` NOTSET...; PyTorch and tf2onnx write every one):
  the default of the op's schema at the model's opset, and for the per-axis lists the spec's
  "1 (or 0) along each spatial axis". A required attribute is kept whatever its value.

Only names, recorded shapes and attributes equal to their default change, never a value, an op
or an edge: onnxruntime runs the same graph (its outputs, and the kernels its optimizer picks,
are compared in the tests).
"""
from __future__ import annotations

from collections.abc import Iterator, Set
from dataclasses import dataclass
from functools import cache

import onnx
from onnx import defs, helper

from onnxquant.graphs import iter_graphs

# Domains whose ops onnxruntime infers the shapes of (value_info of their outputs is not needed).
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Scales and zero points up to this size are compared for sharing.
SHARE_MAX_BYTES = 4096
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_INTEGER_DATA = frozenset({onnx.TensorProto.UINT8, onnx.TensorProto.INT8})
# Ops whose default attributes are dropped (ai.onnx); list attributes whose spec default is a
# value repeated along each spatial axis (the schemas record no default for them).
DEFAULTED_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv",
                           "MaxPool", "AveragePool", "LpPool", "Pad"})
_PER_AXIS_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0, "output_padding": 0}


@dataclass
class CompactResult:
    value_info: int = 0  # recorded shapes dropped
    default_attributes: int = 0  # attributes dropped as equal to their default
    shared: int = 0  # initializers dropped as copies of another
    renamed: int = 0  # node and tensor names shortened
    bytes_before: int = 0
    bytes_after: int = 0


def compact(model: onnx.ModelProto, keep: Set[str]) -> CompactResult:
    """Rewrite ``model`` in place (its functions are left alone); ``keep``: names never changed."""
    result = CompactResult(bytes_before=model.ByteSize())
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    for graph in iter_graphs(model.graph):
        result.value_info += _drop_value_info(graph)
        if opset is not None:
            result.default_attributes += sum(_drop_default_attributes(node, opset) for node in graph.node)
    interface = {v.name for v in [*model.graph.input, *model.graph.output]}
    fixed = set(keep) | interface | {""}
    for graph in iter_graphs(model.graph):
        result.shared += _share_initializers(graph, fixed)
    result.renamed = _shorten_names(model, fixed)
    result.bytes_after = model.ByteSize()
    return result


def _drop_value_info(graph: onnx.GraphProto) -> int:
    foreign = {out for node in graph.node if node.domain not in KNOWN_DOMAINS for out in node.output}
    constants = {i.name for i in graph.initializer}
    computed = {node.output[0] for node in graph.node if node.op_type == "Reshape" and node.domain in ("", "ai.onnx")
                and len(node.input) > 1 and node.input[1] not in constants}
    kept = [v for v in graph.value_info if v.name in foreign
            or (v.name in computed and v.type.tensor_type.elem_type in _INTEGER_DATA)]
    dropped = len(graph.value_info) - len(kept)
    if dropped:
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return dropped


@cache
def _defaults(op_type: str, opset: int) -> dict[str, object] | None:
    """Attribute name -> its default for ``op_type`` at ``opset`` (None: no schema)."""
    try:
        schema = defs.get_schema(op_type, opset, "")
    except defs.SchemaError:
        return None
    out: dict[str, object] = {}
    for name, attr in schema.attributes.items():
        if attr.required:
            continue
        if attr.default_value.name:
            out[name] = (attr.default_value.type, helper.get_attribute_value(attr.default_value))
        elif name in _PER_AXIS_DEFAULTS:
            out[name] = _PER_AXIS_DEFAULTS[name]
    return out


def _is_default(attr: onnx.AttributeProto, default: object) -> bool:
    if isinstance(default, tuple):  # (type, value) from the schema
        return attr.type == default[0] and helper.get_attribute_value(attr) == default[1]
    return attr.type == onnx.AttributeProto.INTS and len(attr.ints) > 0 and all(v == default for v in attr.ints)


def _drop_default_attributes(node: onnx.NodeProto, opset: int) -> int:
    """Drop ``node``'s attributes that equal their default (convolutions, poolings, Pad)."""
    if node.op_type not in DEFAULTED_OPS or node.domain not in ("", "ai.onnx"):
        return 0
    if any(a.name == "output_shape" for a in node.attribute):
        return 0  # (a ConvTranspose's pads derived from its output shape: left as written)
    defaults = _defaults(node.op_type, opset)
    if not defaults:
        return 0
    kept = [a for a in node.attribute if not (a.name in defaults and _is_default(a, defaults[a.name]))]
    dropped = len(node.attribute) - len(kept)
    if dropped:
        del node.attribute[:]
        node.attribute.extend(kept)
    return dropped


def _readers(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the bodies inside it (which may read its initializers)."""
    for sub in iter_graphs(graph):
        yield from sub.node


def _qparams_only(graph: onnx.GraphProto) -> set[str]:
    """Names that every reader (in ``graph`` and its bodies) reads as a Q/DQ scale or zero point."""
    qparams: set[str] = set()
    other: set[str] = set()
    for node in _readers(graph):
        for i, name in enumerate(node.input):
            is_qparam = node.op_type in _QDQ and node.domain in KNOWN_DOMAINS and i in (1, 2)
            (qparams if is_qparam else other).add(name)
    return qparams - other


def _share_initializers(graph: onnx.GraphProto, fixed: set[str]) -> int:
    """Scales and zero points onnxquant wrote that equal an earlier one of the same graph are
    dropped, their readers reading the earlier one."""
    inputs = {v.name for v in graph.input}
    candidates = _qparams_only(graph)
    first: dict[bytes, str] = {}
    alias: dict[str, str] = {}
    for tensor in graph.initializer:
        if tensor.name in fixed or tensor.name in inputs or tensor.name not in candidates \
                or tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() > SHARE_MAX_BYTES:
            continue
        content = onnx.TensorProto()
        content.CopyFrom(tensor)
        content.name = ""
        key = content.SerializeToString(deterministic=True)
        if key in first:
            alias[tensor.name] = first[key]
        else:
            first[key] = tensor.name
    if not alias:
        return 0
    for node in _readers(graph):
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    kept = [t for t in graph.initializer if t.name not in alias]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(alias)


def _short(index: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        index, d = divmod(index, 36)
        out = digits[d] + out
        if not index:
            return out


class _ShortNames:
    """``t`` + base 36 for tensors, ``n`` + base 36 for nodes, skipping every name in use."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.count = 0
        self.tensors: dict[str, str] = {}

    def fresh(self, prefix: str) -> str:
        while True:
            name = prefix + _short(self.count)
            self.count += 1
            if name not in self.used:
                self.used.add(name)
                return name

    def tensor(self, name: str, fixed: set[str]) -> str:
        if name in fixed:
            return name
        if name not in self.tensors:
            self.tensors[name] = self.fresh("t")
        return self.tensors[name]


def model_names(model: onnx.ModelProto) -> set[str]:
    """Every node, tensor and initializer name of ``model`` (bodies included)."""
    used: set[str] = set()
    for graph in iter_graphs(model.graph):
        used.update(t.name for t in graph.initializer)
        used.update(t.values.name for t in graph.sparse_initializer)
        used.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
        for node in graph.node:
            used.update([node.name, *node.input, *node.output])
    return used


def _shorten_names(model: onnx.ModelProto, fixed: set[str]) -> int:
    """Every node and tensor name not in ``fixed`` gets a short one (one mapping for the whole
    model: a body reads an outer tensor by the same new name)."""
    names = _ShortNames(model_names(model))
    renamed_nodes = 0
    for graph in iter_graphs(model.graph):
        for tensor in graph.initializer:
            tensor.name = names.tensor(tensor.name, fixed)
        for sparse in graph.sparse_initializer:
            sparse.values.name = names.tensor(sparse.values.name, fixed)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.name = names.tensor(value.name, fixed)
        for node in graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = names.tensor(name, fixed)
            for i, name in enumerate(node.output):
                node.output[i] = names.tensor(name, fixed)
            if node.name not in fixed:
                node.name = names.fresh("n")
                renamed_nodes += 1
            if node.HasField("domain") and not node.domain:
                node.ClearField("domain")  # written explicitly empty: the default
    return len(names.tensors) + renamed_nodes
