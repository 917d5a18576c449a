"""Write a Linear layer on a 3-D (or higher) activation that was flattened around a Gemm as MatMul + Add.

onnxruntime's graph optimizer (the simplifier ``prepare`` runs) fuses a ``MatMul -> Add(bias)`` whose
input shape it knows into ``Reshape(x, (N, K)) -> Gemm(., W, b) -> Reshape(., (..., M))``: a
static-shape export (torch.onnx without dynamic axes) has its FFN layers written that way.
onnxruntime's transformer fusions match ``MatMul -> Add`` on the 3-D tensor (BiasGelu, the
residual and LayerNorm patterns), and its optimizer, run again on the quantized model, adds its
``gemm_input_shape`` initializers a second time under the same names and fails to load it. This pass
writes each such triple back as ``MatMul(x, W) -> Add(., b)`` on ``x`` itself.

Exact up to float rounding (the bias is added after the product rather than as Gemm's C): the
reshapes only move no data, and are taken only where shape inference declares ``x``'s shape and
the reshapes are the flatten to ``(prod(leading), K)`` and its inverse. Anything else is left.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.declared_shapes import declared_shapes
from onnxquant.passes.gemm_bias import channel_bias
from onnxquant.passes.names import fresh_name
from onnxquant.passes.node_index import NodeIndex, attributes
from onnxquant.passes.weight_only import drop_unread


def _ints(index: NodeIndex, name: str) -> list[int] | None:
    init = index.inits.get(name)
    if init is None:
        return None
    value = tensor_array(init)
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" else None


def _reshape(index: NodeIndex, name: str) -> onnx.NodeProto | None:
    k = index.producer.get(name)
    node = None if k is None else index.nodes[k]
    if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    return node


def _match(index: NodeIndex, gemm: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> dict | None:
    """The flatten, the weight (as MatMul reads it), the bias and the unflatten around ``gemm``."""
    attrs = attributes(gemm)
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    if len(gemm.input) < 2 or gemm.input[1] not in index.inits:
        return None
    flatten = _reshape(index, gemm.input[0])
    if flatten is None or index.only_reader(flatten.output[0], "Gemm") is None:
        return None
    x = flatten.input[0]
    shape = shapes.get(x)
    if shape is None or len(shape) < 3:
        return None
    leading, width = shape[:-1], shape[-1]
    if _ints(index, flatten.input[1]) not in ([math.prod(leading), width], [-1, width]):
        return None
    weight = tensor_array(index.inits[gemm.input[1]])
    if weight.ndim != 2:
        return None
    if attrs.get("transB", 0):
        weight = weight.T
    if weight.shape[0] != width:
        return None
    out_width = weight.shape[1]
    bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
    vector = None
    if bias is not None:
        b = index.inits.get(bias)
        vector = None if b is None else channel_bias(tensor_array(b), out_width)
        if vector is None:  # a per-row C ((M, 1), (M, N)) is no Linear's bias
            return None
    k = index.only_reader(gemm.output[0], "Reshape")
    if k is None or gemm.output[0] in index.outputs:
        return None
    unflatten = index.nodes[k]
    target = _ints(index, unflatten.input[1])
    if target is None or 0 in target or target.count(-1) > 1:
        return None
    resolved = [out_width * math.prod(leading) // -math.prod(target) if t == -1 else t for t in target]
    if tuple(resolved) != (*leading, out_width):
        return None
    return {"flatten": flatten, "unflatten": unflatten, "x": x, "weight": weight,
            "transposed": bool(attrs.get("transB", 0)), "bias": bias, "vector": vector}


def gemm_as_matmul(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Rewrite each ``Reshape -> Gemm -> Reshape`` Linear on a declared 3-D+ tensor as ``MatMul -> Add``
    in place; return how many. Shape initializers left unread are removed. ``shapes``: the model's
    declared shapes, if already inferred."""
    graph = model.graph
    index = NodeIndex(graph)
    if not any(n.op_type == "Gemm" for n in index.nodes):
        return 0
    if shapes is None:
        shapes = declared_shapes(model)
    taken = {n for node in index.nodes for n in (*node.input, *node.output)} | set(index.inits)
    taken |= {i.name for i in graph.input} | {n.name for n in index.nodes if n.name}
    transposed: dict[str, str] = {}  # a transposed weight -> its copy (tied weights are copied once)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    removed: set[str] = set()  # the 2-D values (flattened input, Gemm output) no node computes any more
    released: set[str] = set()  # initializers the old nodes read (the reshape targets, a transposed weight)
    for k, node in enumerate(index.nodes):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        found = _match(index, node, shapes)
        if found is None:
            continue
        weight = node.input[1]
        if found["transposed"]:
            if weight not in transposed:
                transposed[weight] = fresh_name(taken, f"{weight}_transposed")
                graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(found["weight"]),
                                                                      transposed[weight]))
            weight = transposed[weight]
        out = found["unflatten"].output[0]
        base = node.name or out
        if found["bias"] is None:
            replaced[k] = [helper.make_node("MatMul", [found["x"], weight], [out], name=fresh_name(taken, f"{base}_matmul"))]
        else:
            bias = found["bias"]
            if list(index.inits[bias].dims) != [found["weight"].shape[1]]:
                bias = fresh_name(taken, f"{bias}_1d")
                graph.initializer.append(onnx.numpy_helper.from_array(found["vector"], bias))
            product = fresh_name(taken, f"{out}_matmul")
            replaced[k] = [helper.make_node("MatMul", [found["x"], weight], [product], name=fresh_name(taken, f"{base}_matmul")),
                           helper.make_node("Add", [product, bias], [out], name=fresh_name(taken, f"{base}_bias"))]
        dropped |= {index.producer[found["flatten"].output[0]], index.producer[out]}
        removed.update((found["flatten"].output[0], node.output[0]))
        released.update(i for n in (found["flatten"], node, found["unflatten"]) for i in n.input if i in index.inits)
    if not replaced:
        return 0
    nodes = []
    for k, node in enumerate(index.nodes):
        if k in dropped:
            continue
        if k in replaced:
            nodes.extend(replaced[k])
        else:
            kept = onnx.NodeProto()
            kept.CopyFrom(node)  # (copied before the repeated field they live in is cleared)
            nodes.append(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    stale = [v for v in graph.value_info if v.name in removed]
    for value in stale:
        graph.value_info.remove(value)
    drop_unread(graph, released)
    return len(replaced)
