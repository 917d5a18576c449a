"""What an output's producing nodes say about its kind, where its values alone cannot tell.

Two readings the values get wrong:

- one number per sample in [0, 1] is a regression value to the values, but when a ``Sigmoid``
  makes it, it is a yes/no probability (an end-of-turn, wake-word or voice-activity model) whose
  decision at 0.5 is what the user acts on: hint ``binary``;
- a Loop or Scan's per-step outputs (an attention decoder's token probabilities and cell boxes)
  look like a detector's boxes and class scores: hint ``per_step``, so they are never paired as
  detections (``kinds.detection_pairs``) and the probabilities read as a sequence.

The walk back from an output passes through nodes that keep the values (Identity, reshapes,
casts, a Softmax over what a Loop made) and into every branch of an ``If`` (all branches must agree).
"""
from __future__ import annotations

from typing import Any

import onnx

# one data input, values kept (or only reshaped/selected): the producer before them decides
_PASS = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Transpose", "Slice", "Gather",
         "Softmax", "LogSoftmax", "QuantizeLinear", "DequantizeLinear"}
_BINARY_PASS = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "ReduceMean", "ReduceMax", "ReduceMin",
                "QuantizeLinear", "DequantizeLinear"}
_DEPTH = 32


def _producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _origin(name: str, scopes: list[dict[str, onnx.NodeProto]], passing: set[str], depth: int = 0) -> set[str]:
    """Op types that make ``name`` after the value-keeping ops in ``passing``, across If branches;
    ``scopes``: producer maps from the innermost graph out (a branch sees its outer graph's names)."""
    if depth > _DEPTH:
        return {"?"}
    node = None
    for i, scope in enumerate(scopes):
        if name in scope:
            node, scopes = scope[name], scopes[i:]
            break
    if node is None:
        return {"input"}
    if node.op_type == "If":
        index = list(node.output).index(name)
        found: set[str] = set()
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH and attr.g.output and index < len(attr.g.output):
                found |= _origin(attr.g.output[index].name, [_producer_map(attr.g), *scopes], passing, depth + 1)
        return found or {"If"}
    if node.op_type in passing and node.input and node.input[0]:
        return _origin(node.input[0], scopes, passing, depth + 1)
    return {node.op_type}


def graph_hints(model: onnx.ModelProto | None) -> dict[str, str]:
    """Output name -> ``binary`` (made by a Sigmoid) or ``per_step`` (made by a Loop or Scan)."""
    if model is None:
        return {}
    scopes = [_producer_map(model.graph)]
    hints: dict[str, str] = {}
    for output in model.graph.output:
        if _origin(output.name, scopes, _BINARY_PASS) == {"Sigmoid"}:
            hints[output.name] = "binary"
        elif _origin(output.name, scopes, _PASS) & {"Loop", "Scan"}:
            hints[output.name] = "per_step"
    return hints


def one_value_per_sample(value: Any) -> bool:
    """A float tensor of at most one value per sample (shape (), (n,), (n, 1), (n, 1, 1)...) in [0, 1]."""
    import numpy as np

    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.size == 0:
        return False
    per_sample = value.size // value.shape[0] if value.ndim else 1
    return bool(per_sample <= 1 and np.all(np.isfinite(value)) and value.min() >= 0 and value.max() <= 1)
