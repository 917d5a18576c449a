"""A signal front end: the fixed filter bank (STFT, constant-Q transform, mel) that some audio models
compute in the graph before a Log, from the raw samples. The planner keeps its layers float.

Spotify's basic-pitch (tf2onnx) computes a constant-Q transform in the graph: 26 Convs (each
octave's real and imaginary kernels, the low-pass filter before each halving), their squared
magnitude, Sqrt, then Log to decibels. In int8, the Convs' error is a fixed step whatever the
bin's energy, and the log turns that step, on the many quiet bins, into errors as large as the
signal: the three outputs read 6.7-8.7 dB SQNR against fp32; with the front end float, 15-37 dB,
and faster (the front end's Q/DQ round trips between the reshapes go too).

Found from the graph alone, for each Log: every ancestor is linear or magnitude arithmetic (layout
ops, Conv/Gemm/MatMul, Neg, Add, Sub, Mul, Div, Sqrt, Abs, Pow, ReduceSum...); a magnitude step
(Mul(t, t), Pow, Abs) follows a learned layer; a clamp (Clip/Max/Min) only after the last
magnitude step, as the floor before the log; and the first learned layers read a graph input
through layout ops only. A convolutional network with Relu6 (a Clip) ending in log(clamp(.)) has
no magnitude step, or clamps before it, and is left alone; so is a Log of probabilities.
"""
from __future__ import annotations

import onnx

LEARNED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
LAYOUT = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Concat", "Pad", "Slice", "Split", "Flatten",
                    "Identity", "Cast"})
CLAMPS = frozenset({"Clip", "Max", "Min"})  # the floor before the log: log(clamp(power, 1e-10)) (openWakeWord)
# Ops a filter bank and its magnitude are made of: no activation among them.
FRONT_END_OPS = LEARNED | LAYOUT | CLAMPS | frozenset({
    "Shape", "Constant", "Neg", "Add", "Sub", "Mul", "Div", "Sqrt", "Abs", "Pow", "ReduceSum", "ReduceMean",
})
WHY = ("signal front end before a Log (a filter bank of the raw input: the log turns int8's fixed error on "
       "quiet bins into errors as large as the signal)")


def _is_magnitude(node: onnx.NodeProto) -> bool:
    """A step that squares or rectifies: Mul(t, t), Pow, Abs."""
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    return node.op_type in ("Pow", "Abs")


def _reads_input_through_layout(tensor: str, producer: dict[str, onnx.NodeProto], inputs: set[str]) -> bool:
    while tensor not in inputs:
        node = producer.get(tensor)
        if node is None or node.op_type not in LAYOUT or not node.input:
            return False
        tensor = node.input[0]
    return True


def _front_end(log: onnx.NodeProto, producer: dict[str, onnx.NodeProto], inputs: set[str]) -> list[onnx.NodeProto]:
    """The learned layers of the front end before ``log``; empty when its ancestors are not one."""
    key = lambda n: n.output[0]  # noqa: E731 - a node's identity: its first output's name
    ancestors: dict[str, onnx.NodeProto] = {}
    stack = list(log.input)
    while stack:
        node = producer.get(stack.pop())
        if node is None or key(node) in ancestors:
            continue
        ancestors[key(node)] = node
        stack.extend(node.input)
    if not ancestors or not all(n.op_type in FRONT_END_OPS and n.domain in ("", "ai.onnx") for n in ancestors.values()):
        return []
    upstream: dict[str, frozenset[str]] = {}  # node key -> keys of its ancestors

    def up(node: onnx.NodeProto) -> frozenset[str]:
        todo = [node]
        while todo:  # iterative post-order: deep graphs would overflow recursion
            n = todo.pop()
            if key(n) in upstream:
                continue
            parents = [producer[t] for t in n.input if t in producer]
            missing = [p for p in parents if key(p) not in upstream]
            if missing:
                todo.append(n)
                todo.extend(missing)
                continue
            upstream[key(n)] = frozenset().union(*({key(p)} | upstream[key(p)] for p in parents))
        return upstream[key(node)]

    magnitudes = [n for n in ancestors.values() if _is_magnitude(n)]
    learned = [n for n in ancestors.values() if n.op_type in LEARNED]
    learned_keys = {key(n) for n in learned}
    if not learned or not any(up(m) & learned_keys for m in magnitudes):
        return []
    magnitude_keys = {key(m) for m in magnitudes}
    before_magnitude = frozenset().union(*(up(m) for m in magnitudes))
    for clamp in (n for n in ancestors.values() if n.op_type in CLAMPS):
        if key(clamp) in before_magnitude or not up(clamp) & magnitude_keys:
            return []
    first = [n for n in learned if not up(n) & learned_keys]
    if not all(_reads_input_through_layout(n.input[0], producer, inputs) for n in first):
        return []
    return learned


def front_end_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float, for the learned layers of every signal front end in
    ``model``'s main graph; empty when it has none."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    found: dict[str, str] = {}
    for log in (n for n in model.graph.node if n.op_type == "Log" and n.domain in ("", "ai.onnx")):
        found.update({n.name: WHY for n in _front_end(log, producer, inputs)})
    return found
