"""Ask onnxruntime which quantized layers really became integer kernels.

A weighted layer written as ``DQ(weight) -> Conv/Gemm/MatMul`` is fast only when onnxruntime's
QDQ fusions turn it into QLinearConv, QGemm, MatMulIntegerToFloat... When a fusion rule does
not match (a bias shape, an attribute, a missing Q), the layer runs in float *and* every call
dequantizes its weight: slower than the fp32 model, silently. onnxruntime writes the graph it
will run (``optimized_model_filepath``); a quantized weight that still reaches a
DequantizeLinear there belongs to such a float island. Deterministic: no timing.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxquant.ops import WEIGHTED_OPS
from onnxquant.passes.scopes import iter_bodies, iter_scoped_nodes

_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class FusionCheck:
    """How many quantized weighted layers onnxruntime's CPU provider runs as integer kernels."""

    quantized_layers: int
    integer_layers: int
    float_islands: list[str] = field(default_factory=list)  # layer (node) names, graph order
    # Float ops of onnxruntime's graph between a DequantizeLinear and a QuantizeLinear: each
    # pays a dequantize/quantize round trip (op type, node name), graph order.
    round_trips: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.integer_layers} of {self.quantized_layers} quantized layers run as integer kernels"

    def round_trip_summary(self) -> str:
        """``"HardSigmoid 27, Mul 27"``: the float ops between integer kernels, by type."""
        counts: dict[str, int] = {}
        for op, _ in self.round_trips:
            counts[op] = counts.get(op, 0) + 1
        return ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {"quantized_layers": self.quantized_layers, "integer_layers": self.integer_layers,
                "float_islands": list(self.float_islands), "round_trips": [list(r) for r in self.round_trips]}


def quantized_weights(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Quantized weight initializer -> the weighted layers (node names, graph order) that read it
    through a DequantizeLinear: several where one stored weight serves many nodes (an unrolled RNN).
    Layers inside If/Loop/Scan bodies count under their qualified names (``passes/scopes.py``),
    reading a weight of their own graph or of an enclosing one."""
    integer: dict[int, set[str]] = {}  # id(graph) -> its integer initializers
    dq_source: dict[int, dict[str, str]] = {}  # id(graph) -> DequantizeLinear output -> weight

    def of(graph: onnx.GraphProto) -> tuple[set[str], dict[str, str]]:
        if id(graph) not in integer:
            integer[id(graph)] = {i.name for i in graph.initializer if i.data_type in _INTEGER_TYPES}
            dq_source[id(graph)] = {}
        return integer[id(graph)], dq_source[id(graph)]

    visible: dict[tuple[int, ...], set[str]] = {}  # the scope chain -> integer initializers it sees
    layers: dict[str, list[str]] = {}
    for scoped in iter_scoped_nodes(model.graph):
        node, graph = scoped.node, scoped.scopes[-1][1]
        chain = tuple(id(g) for _, g in scoped.scopes)
        if chain not in visible:
            visible[chain] = set().union(*(of(g)[0] for _, g in scoped.scopes))
        visible_integer = visible[chain]
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in visible_integer:
            of(graph)[1][node.output[0]] = node.input[0]
        elif node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            source = next((of(g)[1][node.input[1]] for _, g in reversed(scoped.scopes) if node.input[1] in of(g)[1]),
                          None)
            if source is not None:
                layers.setdefault(source, []).append(scoped.qualified)
        elif node.op_type == "QAttention" and len(node.input) > 1 and node.input[1] in visible_integer:
            layers.setdefault(node.input[1], []).append(scoped.qualified)  # an integer kernel as written (passes/qattention.py)
    return layers


def optimized_graph(model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs (extended optimizations: the QDQ fusions, no layout change)."""
    import onnxruntime as ort

    payload = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="onnxquant-fusion-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        return onnx.load_model(str(out), load_external_data=False)


# Ops whose outputs are shapes, not data: a path through them is shape arithmetic, no round trip.
_SHAPE_OPS = {"Shape", "Size"}


# Integer kernels that take float inputs and quantize them themselves: not float work.
_INTEGER_FROM_FLOAT = {"QGemm", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                       "MatMulIntegerToFloat"}


def round_trips(optimized: onnx.ModelProto) -> list[tuple[str, str]]:
    """Float nodes of an optimized graph on a path DequantizeLinear -> float ops -> QuantizeLinear:
    work done in float between integer kernels (a float island of activations). Data movement
    counts too: onnxruntime drops Q/DQ around it when it can, so one left there is a round trip.
    Each If/Loop/Scan body is looked at on its own (its nodes by qualified name). Deterministic;
    graph order, bodies after the main graph."""
    found = _round_trips(list(optimized.graph.node), "")
    for path, body, _ in iter_bodies(optimized.graph):
        found.extend(_round_trips(list(body.node), path))
    return found


def _round_trips(nodes: list[onnx.NodeProto], path: str) -> list[tuple[str, str]]:
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            readers.setdefault(i, []).append(k)
    qdq = {"DequantizeLinear", "QuantizeLinear"}

    def is_float_op(k: int) -> bool:
        n = nodes[k]
        return (n.op_type not in qdq and n.op_type not in _SHAPE_OPS and not n.op_type.startswith("QLinear")
                and n.op_type not in _INTEGER_FROM_FLOAT)

    after_dq: set[int] = set()  # float ops reachable from a DequantizeLinear through float ops
    stack = [r for k, n in enumerate(nodes) if n.op_type == "DequantizeLinear" for r in readers.get(n.output[0], [])]
    while stack:
        k = stack.pop()
        if k in after_dq or not is_float_op(k):
            continue
        after_dq.add(k)
        stack.extend(r for o in nodes[k].output for r in readers.get(o, []))
    before_q: set[int] = set()  # float ops that reach a QuantizeLinear through float ops
    stack = [producer[n.input[0]] for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in producer]
    while stack:
        k = stack.pop()
        if k in before_q or not is_float_op(k):
            continue
        before_q.add(k)
        stack.extend(producer[i] for i in nodes[k].input if i in producer)
    return [(nodes[k].op_type, f"{path}/{nodes[k].name}" if path else nodes[k].name) for k in sorted(after_dq & before_q)]


def check_fusion(model: onnx.ModelProto, payload: bytes | None = None, only: set[str] | None = None) -> FusionCheck:
    """Which of ``model``'s quantized weighted layers onnxruntime fuses into integer kernels.

    ``payload``: ``model`` already serialized (spares one serialization). ``only``: the layers
    to count (those this run quantized; an input's own QDQ layers are not ours to re-plan).
    """
    layers = {w: [n for n in names if only is None or n in only] for w, names in quantized_weights(model).items()}
    layers = {w: names for w, names in layers.items() if names}
    if not layers:
        return FusionCheck(0, 0)
    optimized = optimized_graph(payload if payload is not None else model)
    running = list(iter_scoped_nodes(optimized.graph))
    still_dequantized = {s.node.input[0] for s in running if s.node.op_type == "DequantizeLinear" and s.node.input}
    # A shared weight may be fused for some readers and not others: a reader is a float island
    # when onnxruntime's graph still has it, by name, as a float weighted op.
    float_ops = {s.qualified for s in running if s.node.op_type in WEIGHTED_OPS and s.node.domain in ("", "ai.onnx")}
    order = {s.qualified: k for k, s in enumerate(iter_scoped_nodes(model.graph))}
    islands = sorted({layer for weight, names in layers.items() if weight in still_dequantized for layer in names
                      if len(names) == 1 or layer in float_ops}, key=order.get)
    total = len({n for names in layers.values() for n in names})
    return FusionCheck(total, total - len(islands), islands, round_trips(optimized))
