"""A signal front end: the fixed filter bank (STFT, constant-Q transform, mel) that some audio models
compute in the graph before a Log, from the raw samples. The planner keeps its layers float.

Spotify's basic-pitch (tf2onnx) computes a constant-Q transform in the graph: 26 Convs (each
octave's real and imaginary kernels, the low-pass filter before each halving), their squared
magnitude, Sqrt, then Log to decibels. In int8, the Convs' error is a fixed step whatever the
bin's energy, and the log turns that step, on the many quiet bins, into errors as large as the
signal: the three outputs read 6.7-8.7 dB SQNR against fp32; with the front end float, 15-37 dB,
and faster (the front end's Q/DQ round trips between the reshapes go too).

Found from the graph alone: the learned layers (Conv/Gemm/MatMul) among the ancestors of a Log
whose every ancestor is linear or magnitude arithmetic (layout ops, Conv/Gemm/MatMul, Neg, Add,
Sub, Mul, Div, Sqrt, Abs, Pow, ReduceSum..., and a clamp). A network that ends in a Log of its
probabilities has a Softmax or another activation on the way and is left alone.
"""
from __future__ import annotations

import onnx

LEARNED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops a filter bank and its magnitude are made of: no activation among them.
FRONT_END_OPS = LEARNED | frozenset({
    "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Concat", "Pad", "Slice", "Split", "Flatten", "Identity",
    "Cast", "Shape", "Constant", "Neg", "Add", "Sub", "Mul", "Div", "Sqrt", "Abs", "Pow", "ReduceSum", "ReduceMean",
    "Clip", "Max", "Min",  # the floor before the log: log(clamp(power, 1e-10)) (openWakeWord's melspectrogram)
})
WHY = ("signal front end before a Log (a filter bank of the raw input: the log turns int8's fixed error on "
       "quiet bins into errors as large as the signal)")


def front_end_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float, for the learned layers of every signal front end in
    ``model``'s main graph; empty when it has none."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, str] = {}
    for log in (n for n in model.graph.node if n.op_type == "Log" and n.domain in ("", "ai.onnx")):
        ancestors: dict[str, onnx.NodeProto] = {}
        stack = list(log.input)
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in ancestors:
                continue
            ancestors[node.name] = node
            stack.extend(node.input)
        if not all(n.op_type in FRONT_END_OPS and n.domain in ("", "ai.onnx") for n in ancestors.values()):
            continue
        found.update({name: WHY for name, n in ancestors.items() if n.op_type in LEARNED})
    return found
