"""A detector's decode tail: the arithmetic after its last learned layer that joins boxes in pixels
with class scores in one output. The planner keeps it float.

YOLOv5/v7/v8/YOLO11 exports end the same way: the head Convs' maps are reshaped and joined across
levels, the box side decoded (YOLOv8's DFL: a softmax over 16 bins and a 1x1 Conv with the fixed
weights 0..15; then anchor points plus or minus distances, times the strides; YOLOv5: sigmoid
offsets times 2 plus the grid, times the stride), the class side put through a Sigmoid, and one
Concat joins them: ``(1, 4 + classes, N)`` or ``(1, N, 5 + classes)``. In int8, that Concat and
the Concats and Splits before it share one scale: coordinates up to 640 next to scores in 0..1
leave the scores a few steps, or none; the DFL's bins and the stride products lose whole pixels.
The tail is elementwise work on a few thousand candidates, next to nothing beside the network.

Found from the graph alone: the nodes after which no learned layer (a Conv/Gemm/MatMul with
constant weights, the DFL's fixed 0..15 projection aside) follows, on the way to a graph output
whose tail has a Concat joining a box input (from box arithmetic: Add/Sub/Mul/Div with a constant
operand, or the DFL projection) with a scores-only input (from a Sigmoid and nothing else). A raw
head (YOLOX's offsets next to sigmoid scores, no box arithmetic) has no such Concat and is left
to the planner's usual rules.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

LEARNED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# A detector's output holds at least this many candidates (YOLO at 320 pixels: 2100), and its box
# arithmetic reads a constant at least this large (the anchor grid, the per-candidate strides):
# a scalar scale (an age regressor's x100) is no box decoding.
MIN_CANDIDATES = 100
BOX_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div"})
REASON = "detector decode tail: boxes in pixels joined with class scores (kept float for accuracy; cheap)"
HEAD_REASON = ("detector head's last layer, read only by the decode tail: its class and box logits span "
               "tens of units below zero, one uint8 scale leaves the scores coarse steps (kept float; cheap)")


def constants_of(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    found = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def is_dfl_projection(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    """YOLOv8's DFL projection: a 1x1 Conv to one channel whose weights are 0, 1, ..., bins - 1."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in constants:
        return False
    dims = tuple(constants[node.input[1]].dims)  # the shape first: no weight is read but this one
    if len(dims) != 4 or dims[0] != 1 or dims[2:] != (1, 1) or dims[1] < 4:
        return False
    w = numpy_helper.to_array(constants[node.input[1]])
    if len(node.input) > 2 and node.input[2]:
        bias = constants.get(node.input[2])
        if bias is None or np.any(numpy_helper.to_array(bias) != 0):
            return False
    return bool(np.array_equal(w.reshape(-1), np.arange(w.shape[1], dtype=w.dtype)))


def is_learned(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    return (node.op_type in LEARNED and len(node.input) > 1 and node.input[1] in constants
            and not is_dfl_projection(node, constants))


def tail_context(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], dict[str, onnx.TensorProto],
                                                  dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]],
                                                  set[str]]:
    """What a walk back from the graph outputs to the last learned layers reads: the main graph's
    nodes, its constants, each value's producer and readers, and the nodes followed (downstream) by a learned
    layer (the graph is in topological order)."""
    nodes = list(model.graph.node)
    constants = constants_of(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in nodes:
        for out in node.output:
            producer[out] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    before_learned: set[str] = set()
    for node in reversed(nodes):
        readers = [r for out in node.output for r in consumers.get(out, [])]
        if any(is_learned(r, constants) or r.name in before_learned for r in readers):
            before_learned.add(node.name)
    return nodes, constants, producer, consumers, before_learned


def decode_tail_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float, for every decode tail in ``model``'s main graph and the
    learned layers read only by it (the head's last Convs); empty when the model has no tail."""
    nodes, constants, producer, consumers, before_learned = tail_context(model)
    found: set[str] = set()
    for output in model.graph.output:
        if not _holds_candidates(output):
            continue
        tail = tail_of(output.name, nodes, producer, constants, before_learned)
        if _joins_boxes_and_scores(tail, constants):
            found.update(n.name for n in tail)
    reasons = dict.fromkeys(sorted(found), REASON)
    for node in nodes:
        readers = [r for out in node.output for r in consumers.get(out, [])]
        if is_learned(node, constants) and readers and all(r.name in found for r in readers):
            reasons[node.name] = HEAD_REASON
    return reasons


def tail_of(output: str, nodes: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto], constants: dict[str, onnx.TensorProto],
             before_learned: set[str]) -> list[onnx.NodeProto]:
    """The nodes feeding ``output`` that no learned layer follows, in graph order (not the learned
    layers themselves, nor Constant nodes)."""
    seen: dict[str, onnx.NodeProto] = {}
    stack = [output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.name in before_learned or node.op_type == "Constant" \
                or is_learned(node, constants):
            continue
        seen[node.name] = node
        stack.extend(i for i in node.input if i)
    return [n for n in nodes if n.name in seen and seen[n.name] is n]


def _joins_boxes_and_scores(tail: list[onnx.NodeProto], constants: dict[str, onnx.TensorProto]) -> bool:
    """Whether a Concat in ``tail`` joins a box input with a scores-only input (tags flow forward:
    "score" from a Sigmoid, "box" from box arithmetic with a constant or the DFL projection)."""
    tags: dict[str, frozenset[str]] = {}
    for node in tail:
        inputs = [tags.get(i, frozenset()) for i in node.input if i]
        own: set[str] = set().union(*inputs) if inputs else set()
        if node.op_type == "Sigmoid":
            own.add("score")
        elif (node.op_type in BOX_ARITHMETIC and any(_grid_sized(constants.get(i)) for i in node.input)) \
                or is_dfl_projection(node, constants):
            own.add("box")
        elif node.op_type != "Concat" and own and any(i not in constants and not tags.get(i) for i in node.input if i):
            own.add("other")  # (mixed with an untagged activation: SiLU's x * sigmoid(x) is no score)
        if node.op_type == "Concat":
            if any("box" in t for t in inputs) and any(t == {"score"} for t in inputs):
                return True
        for out in node.output:
            tags[out] = frozenset(own)
    return False


def _grid_sized(constant: onnx.TensorProto | None) -> bool:
    """A constant with one value per candidate or more (by its shape; nothing is read)."""
    return constant is not None and int(np.prod(constant.dims)) >= MIN_CANDIDATES


def _holds_candidates(output: onnx.ValueInfoProto) -> bool:
    """A rank-3 output whose candidate axis may be long: (batch, 4 + classes, N) or (batch, N, 5 + classes)."""
    dims = output.type.tensor_type.shape.dim if output.type.tensor_type.HasField("shape") else None
    if dims is None:
        return True  # (shape unknown: the tail's own arithmetic decides)
    if len(dims) != 3:
        return False
    return any(not d.HasField("dim_value") or d.dim_value >= MIN_CANDIDATES for d in dims[1:])
