"""fp16 models: quantize an fp32 copy of the inside, keep the fp16 interface and fp16 storage.

onnxruntime's CPU provider has no fp16 integer-kernel fusions, and calibration, the planner and
the recovery passes reason in fp32. So the model's inside is widened to fp32 (exact: every fp16
value is an fp32 value), behind a Cast at each fp16 graph input and before each fp16 graph
output, so callers still feed and read fp16. After the rewrite, the weights that stayed float
are stored in fp16 again behind a Cast (onnxruntime folds it when it loads the model), so the
float remainder costs what it cost in the original file.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.float_weights import is_float_weight
from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.passes.names import fresh_name

F16 = onnx.TensorProto.FLOAT16
F32 = onnx.TensorProto.FLOAT


def _widen(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == F16:
        tensor.CopyFrom(numpy_helper.from_array(tensor_array(tensor).astype(np.float32), tensor.name))


def _widen_type(value: onnx.ValueInfoProto) -> None:
    t = value.type.tensor_type
    if t.elem_type == F16:
        t.elem_type = F32


def has_float16_interface(model: onnx.ModelProto) -> bool:
    """Whether callers feed or read fp16: else only the weights are stored fp16 (behind Casts to
    float32, as TF-Lite's fp16 quantization and mixed-precision exporters write them)."""
    return any(v.type.tensor_type.elem_type == F16 for v in [*model.graph.input, *model.graph.output])


def is_float16_model(model: onnx.ModelProto) -> bool:
    graph = model.graph
    return (any(v.type.tensor_type.elem_type == F16 for v in [*graph.input, *graph.output])
            or any(i.data_type == F16 for g in iter_graphs(graph) for i in g.initializer))


def widen_float16(model: onnx.ModelProto) -> set[str]:
    """Rewrite an fp16 model to compute in fp32 inside, in place; fp16 graph inputs and outputs
    stay fp16 behind Casts. Returns the initializers that were fp16 (empty: not an fp16 model)."""
    if not is_float16_model(model):
        return set()
    graph = model.graph
    was_f16: set[str] = set()
    for g in iter_graphs(graph):
        for init in g.initializer:
            if init.data_type == F16:
                was_f16.add(init.name)
                _widen(init)
        for value in [*g.value_info, *(g.input if g is not graph else []), *(g.output if g is not graph else [])]:
            _widen_type(value)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    _widen(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        _widen(t)
                elif node.op_type == "Cast" and attr.name == "to" and attr.i == F16:
                    attr.i = F32
    used = {n for g in iter_graphs(graph) for node in g.node for n in [*node.input, *node.output, node.name]}
    used |= {v.name for v in [*graph.input, *graph.output]} | {i.name for i in graph.initializer}
    renames: dict[str, str] = {}
    head, tail = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == F16:
            inside = renames[value.name] = fresh_name(used, f"{value.name}_float32")
            head.append(helper.make_node("Cast", [value.name], [inside], name=fresh_name(used, f"{value.name}_to_float32"),
                                         to=F32))
    for g in iter_graphs(graph):
        for node in g.node:
            for k, name in enumerate(node.input):
                if name in renames:
                    node.input[k] = renames[name]
    producers = {o: node for node in graph.node for o in node.output}
    for value in graph.output:
        if value.type.tensor_type.elem_type != F16:
            continue
        source = value.name
        if source in renames:  # an fp16 input passed straight through: read the fp32 copy
            source = renames[source]
        elif source in producers:
            inside = fresh_name(used, f"{value.name}_float32")
            node = producers[source]
            node.output[list(node.output).index(source)] = inside
            for g in iter_graphs(graph):
                for reader in g.node:
                    for k, name in enumerate(reader.input):
                        if name == source:
                            reader.input[k] = inside
            source = inside
        else:
            continue  # an initializer or an input written straight out: left as it is
        tail.append(helper.make_node("Cast", [source], [value.name], name=fresh_name(used, f"{value.name}_to_float16"), to=F16))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    return was_f16


# Below this many values, a Cast node costs more bytes than fp16 storage saves.
HALF_MIN_VALUES = 16
# Layers whose float parameters (weight, bias) may be read through a Cast: onnxruntime folds it
# at load time. (Not QuantizeLinear/DequantizeLinear: their fusions need initializer scales.)
_CAST_READERS = {"Conv", "ConvTranspose", "Gemm"}


def exact_float16_parameters(model: onnx.ModelProto) -> set[str]:
    """float32 initializers of the main graph, of at least HALF_MIN_VALUES values, that only
    Conv/ConvTranspose/Gemm read and whose every value is an fp16 value (a model converted from
    fp16 storage: TF-Lite's fp16 quantization folded into float32 by the converter). Stored fp16,
    they are the same numbers in half the bytes."""
    graph = model.graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    out = set()
    for init in graph.initializer:
        if init.data_type != F32 or int(np.prod(init.dims)) < HALF_MIN_VALUES:
            continue
        if not readers.get(init.name) or not readers[init.name] <= _CAST_READERS:
            continue
        value = tensor_array(init)
        if np.isfinite(value).all() and np.array_equal(value.astype(np.float16).astype(np.float32), value):
            out.add(init.name)
    return out


def store_float16(model: onnx.ModelProto, names: set[str], weights_only: bool = True) -> int:
    """Store the float weights among ``names`` (fp16 in the original model) as fp16 again, each read
    through a Cast to fp32 (``weights_only`` false: any float initializer among them, biases too).
    Returns how many were stored so."""
    graph = model.graph
    readers = {name for node in graph.node for name in node.input}
    used = {n for node in graph.node for n in [*node.input, *node.output, node.name]} | {i.name for i in graph.initializer}
    casts = []
    renamed: dict[str, str] = {}
    for init in graph.initializer:
        if init.name not in names or init.data_type != F32 or init.name not in readers:
            continue
        if weights_only and not is_float_weight(init):
            continue
        half = fresh_name(used, f"{init.name}_float16")
        casts.append(helper.make_node("Cast", [half], [init.name], name=fresh_name(used, f"{init.name}_to_float32"), to=F32))
        renamed[init.name] = half
        init.CopyFrom(numpy_helper.from_array(tensor_array(init).astype(np.float16), half))
    if casts:
        nodes = [*casts, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    return len(casts)
