"""A score head's tail: the arithmetic after a Gemm/MatMul that gives each sample one score or a
handful (a speech-quality MOS, an age, a two-way face probability). The planner keeps it float.

Calibration sees such a tensor only as many times as it has samples: PLCMOS v2 ends in a Gemm to
one logit, then Squeeze, Sigmoid, times 4, plus 1. Quantized, the logit and the Sigmoid take the
range of the scores the calibration clips gave, and every score beyond it is clipped: calibrated
on 18 clips scoring 1.55-2.74 MOS, clips of 3.41 and 3.14 came out 0.67 and 0.40 MOS low (the
recipe search's trials, which calibrate on 18 of the 24 clips, scored that clipping instead of
the recipes); calibrated on all 24, no score above 3.41 MOS can come out, clean speech included.
Kept float, the tail costs nothing (a few values a sample) and a Gemm/MatMul keeps its integer
kernel with a float output (QGemm, MatMulIntegerToFloat).

Found from the graph alone: for each graph output, the nodes after which no learned layer
follows (``decode_tail``'s walk), where every learned layer that feeds them is a Gemm/MatMul
with constant weights and at most ``MAX_SCORES`` output features. A classifier's 1000 logits
before a Softmax, an embedding or a Conv head's map are left to the planner's usual rules.
A head output that a quantized layer outside the tail also reads gets a Q/DQ pair for that layer
only: the tail keeps reading the float value (``planner._decide_outputs``), else it would read the
DQ and be capped at the calibrated top all the same.
"""
from __future__ import annotations

import onnx

from onnxquant.decode_tail import is_learned, tail_context, tail_of

# A head with at most this many outputs a sample gives calibration at most this many values a
# sample: a range from a few dozen samples' values is no range for unseen ones.
MAX_SCORES = 16
SCORE_OPS = ("Gemm", "MatMul")
REASON = "score head tail: a few values a sample after the last Gemm/MatMul (kept float: a calibrated range would clip unseen scores)"


def _features(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> int | None:
    """Output features of a Gemm/MatMul with a constant 2-D weight; None otherwise."""
    dims = tuple(constants[node.input[1]].dims)
    if len(dims) != 2:
        return None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return dims[0] if trans_b else dims[1]
    return dims[1]


def score_tail_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float, for every score head's tail in ``model``'s main graph."""
    nodes, constants, producer, _, before_learned = tail_context(model)
    found: set[str] = set()
    for output in model.graph.output:
        tail = tail_of(output.name, nodes, producer, constants, before_learned)
        if not tail:
            continue
        names = {n.name for n in tail}
        heads = {producer[i].name: producer[i] for n in tail for i in n.input
                 if i in producer and producer[i].name not in names and is_learned(producer[i], constants)}
        if heads and all(h.op_type in SCORE_OPS and (_features(h, constants) or MAX_SCORES + 1) <= MAX_SCORES
                         for h in heads.values()):
            found.update(names)
    return dict.fromkeys(sorted(found), REASON)
