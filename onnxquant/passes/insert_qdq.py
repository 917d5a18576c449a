"""Perform a ``QuantPlan``: insert QuantizeLinear/DequantizeLinear, quantize initializers.

Activations get one Q/DQ pair per tensor. When a quantized node produced the tensor, every
reader takes the DQ output (the float tensor then exists only as the input of Q, which is what
onnxruntime needs to fuse the producer into an integer kernel); otherwise only quantized readers
do, and float readers keep the exact float tensor. Weights are stored quantized with a DQ node.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.passes.gather_rows import gather_row_quantized
from onnxquant.passes.names import fresh_name
from onnxquant.passes.qattention import write_qattention
from onnxquant.planner import QuantPlan
from onnxquant.qparams import QParams

MS_DOMAIN = "com.microsoft"


class _Names:
    """Fresh, deterministic tensor and node names that never collide with the graph's."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used: set[str] = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)
        self.used.update(v.name for v in model.graph.input)

    def fresh(self, base: str) -> str:
        return fresh_name(self.used, base)


def qdq_domain(params: QParams, opset: int) -> str:
    """16-bit Q/DQ is standard from opset 21; before that onnxruntime has it in com.microsoft."""
    return MS_DOMAIN if params.dtype in ("uint16", "int16") and opset < 21 else ""


def _params_initializers(names: _Names, base: str, params: QParams) -> list[onnx.TensorProto]:
    scale = numpy_helper.from_array(np.asarray(params.scale, np.float32), names.fresh(f"{base}_scale"))
    zero = numpy_helper.from_array(np.asarray(params.zero_point), names.fresh(f"{base}_zero_point"))
    return [scale, zero]


def _axis_attr(params: QParams) -> dict[str, int]:
    return {"axis": params.axis} if params.axis is not None and np.ndim(params.scale) == 1 else {}


# Layers whose onnxruntime QDQ fusion (QLinearConv, QLinearMatMul/MatMulIntegerToFloat) takes a
# weight DequantizeLinear without a zero point (tested). Its Gemm fusion does not; QAttention is
# built from the DequantizeLinear's inputs (passes/qattention.py); ConvTranspose is not fused on
# x86: these keep their zero point.
_IMPLIED_ZERO_POINT_OPS = {"Conv", "MatMul"}


def _stored_weight_key(tensor: str, integers: np.ndarray, params: QParams, implied_zero: bool) -> tuple:
    """What a stored weight is: two readers of one weight with equal keys share its initializers."""
    return (tensor, integers.dtype.str, integers.shape, integers.tobytes(), params.dtype, params.axis,
            np.asarray(params.scale, np.float32).tobytes(), np.asarray(params.zero_point).tobytes(), implied_zero)


def _zero_point_implied(params: QParams, op_type: str) -> bool:
    """A signed weight whose zero points are all 0 (symmetric int8) needs no zero-point input."""
    return (op_type in _IMPLIED_ZERO_POINT_OPS and params.dtype == "int8"
            and not np.any(np.asarray(params.zero_point)))


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, opset: int, inplace: bool = False) -> onnx.ModelProto:
    """Return the model with the plan applied.

    ``model`` is left untouched unless ``inplace``: then it is rewritten and returned, which
    spares a copy of every float weight the rewrite is about to replace.
    """
    if inplace:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    graph = out.graph
    names = _Names(out)
    sel = plan.selection
    new_inits: list[onnx.TensorProto] = []
    head: list[onnx.NodeProto] = []  # weight DQ nodes and Q/DQ of graph inputs
    after: dict[str, list[onnx.NodeProto]] = {}  # tensor -> Q/DQ nodes placed after its producer
    dq_of: dict[str, str] = {}
    renamed: dict[str, str] = {}  # graph output -> new name of its producer's float result

    producers = {o for n in graph.node for o in n.output}
    for tensor in sel.activations:
        params = plan.activations[tensor]
        scale, zero = _params_initializers(names, tensor, params)
        new_inits += [scale, zero]
        q_out, dq_out = names.fresh(f"{tensor}_quantized"), names.fresh(f"{tensor}_dequantized")
        q_in = tensor
        if tensor in sel.boundary_outputs:
            # A graph output written by the DQ: the producer's float result gets a new name, so
            # the producer's only reader is the Q (a clean node unit for an NPU).
            q_in = renamed[tensor] = names.fresh(f"{tensor}_before_quantize")
            dq_out = tensor
        domain = qdq_domain(params, opset)
        nodes = [
            helper.make_node("QuantizeLinear", [q_in, scale.name, zero.name], [q_out],
                             name=names.fresh(f"{tensor}_QuantizeLinear"), domain=domain),
            helper.make_node("DequantizeLinear", [q_out, scale.name, zero.name], [dq_out],
                             name=names.fresh(f"{tensor}_DequantizeLinear"), domain=domain),
        ]
        (after.setdefault(tensor, []) if tensor in producers else head).extend(nodes)
        dq_of[tensor] = dq_out

    weight_dq: dict[tuple[str, str], str] = {}
    inits = {i.name: i for i in graph.initializer}
    readers = Counter(tensor for _, tensor in plan.weights)
    # A weight several nodes read (an RNN unrolled over time steps: one matrix, 20 Gemms) is
    # stored once when its integers and parameters come out the same for each reader; each
    # reader keeps its own DequantizeLinear (its own node unit for onnxruntime's fusions).
    stored_once: dict[tuple, list[str]] = {}
    for (node_name, tensor), params in sorted(plan.weights.items()):
        value = tensor_array(inits[tensor])
        base = f"{tensor}_{node_name}" if readers[tensor] > 1 else tensor
        integers = plan.quantized_weight((node_name, tensor), value)
        # A zero point of 0 is DequantizeLinear's default: an int32 bias's (per-channel, it would
        # take as many bytes as the bias itself) and a symmetric int8 weight's are not stored.
        implied_zero = params.dtype == "int32" or _zero_point_implied(params, sel.quantized.get(node_name, ""))
        key = _stored_weight_key(tensor, integers, params, implied_zero) if readers[tensor] > 1 else None
        if key is not None and key in stored_once:
            dq_inputs = stored_once[key]
        else:
            q_init = numpy_helper.from_array(integers, names.fresh(f"{base}_quantized"))
            scale, zero = _params_initializers(names, base, params)
            stored = [q_init, scale] if implied_zero else [q_init, scale, zero]
            dq_inputs = [t.name for t in stored]
            new_inits += stored
            if key is not None:
                stored_once[key] = dq_inputs
        dq_out = names.fresh(f"{base}_dequantized")
        head.append(helper.make_node("DequantizeLinear", dq_inputs, [dq_out],
                                     name=names.fresh(f"{base}_DequantizeLinear"),
                                     domain=qdq_domain(params, opset), **_axis_attr(params)))
        weight_dq[(node_name, tensor)] = dq_out

    guarded = _runtime_would_quantize(graph, sel)
    body: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in sel.row_tables:
            table = node.input[0]
            node, stored = gather_row_quantized(node, tensor_array(inits[table]), names.fresh(f"{table}_quantized"),
                                                names.fresh(f"{table}_scale"))
            new_inits += stored
        quantized = node.name in sel.quantized and node.name not in sel.weight_only  # those compute in float
        for i, name in enumerate(node.input):
            if (node.name, name) in weight_dq:
                node.input[i] = weight_dq[(node.name, name)]
            elif name in dq_of and (quantized or (name in sel.owned and node.name not in guarded)):
                node.input[i] = dq_of[name]
        body.append(node)
        for k, output in enumerate(list(node.output)):
            if output in renamed:
                node.output[k] = renamed[output]
            body.extend(after.get(output, []))

    # Bodies read outer values too: an owned tensor must have the Q as its only float reader, or
    # onnxruntime cannot fuse its producer into an integer kernel.
    _rewire_body_reads(body, {t: dq_of[t] for t in sel.owned if t in dq_of})

    # Initializers now read only through their quantized copy are dropped.
    still_read = {i for n in [*head, *body] for i in n.input}
    still_read |= {o.name for o in graph.output}
    still_read |= _subgraph_reads(body)
    kept = [i for i in graph.initializer if i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(head + body)
    write_qattention(graph)  # onnxruntime has no QDQ fusion for Attention
    if any(n.domain == MS_DOMAIN for n in head + body) and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out


_PASS_THROUGH_ACTIVATIONS = {"Relu", "Clip"}


def _runtime_would_quantize(graph: onnx.GraphProto, sel) -> set[str]:
    """Float Conv/Gemm/MatMul nodes that onnxruntime would quantize on its own.

    onnxruntime's WeightBiasQuantization turns ``DQ -> Conv(float weight) -> Q`` into an integer
    kernel, quantizing the weight itself (coarser than ours): a node the plan keeps float
    (excluded by the user, say) would silently run in int8 and lose accuracy. Such nodes must
    read the exact float input instead of the DQ output. Their producer then runs unfused:
    slower around the float node, but the node really is float.
    """
    inits = {i.name for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    quantized_outputs = set(sel.activations)
    guarded = set()
    for node in graph.node:
        if node.name in sel.quantized or node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        if node.input[1] not in inits or not node.output:
            continue
        out = node.output[0]
        # Follow a Relu/Clip that onnxruntime would fold into the following Q.
        chain = readers.get(out, [])
        if len(chain) == 1 and chain[0].op_type in _PASS_THROUGH_ACTIVATIONS and chain[0].name not in sel.quantized:
            out = chain[0].output[0]
        if out in quantized_outputs:
            guarded.add(node.name)
    return guarded


def _rewire_body_reads(nodes: list[onnx.NodeProto], renamed: dict[str, str]) -> None:
    """Inside If/Loop/Scan bodies, read ``renamed`` outer values under their new names."""
    if not renamed:
        return
    for node in nodes:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                for graph in iter_graphs(body):
                    for inner in graph.node:
                        for i, name in enumerate(inner.input):
                            if name in renamed:
                                inner.input[i] = renamed[name]


def _subgraph_reads(nodes: list[onnx.NodeProto]) -> set[str]:
    """Outer-scope names read inside If/Loop/Scan bodies."""
    reads: set[str] = set()
    for node in nodes:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                for graph in iter_graphs(body):
                    for inner in graph.node:
                        reads.update(inner.input)
    return reads
