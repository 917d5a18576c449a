"""Cross-layer equalisation (Nagel et al., 2019): even out weight ranges of consecutive Convs.

For ``Conv1 -> act -> Conv2`` with a positively homogeneous ``act`` (ReLU, LeakyReLU, PReLU,
Clip with min 0 and no max, or none), ``act(x / s) = act(x) / s`` for ``s > 0``, so output
channel ``c`` of Conv1 can be divided by ``s_c`` and input channel ``c`` of Conv2 multiplied by
it without changing the function. ``s_c = sqrt(r1_c / r2_c)`` makes both channel ranges
``sqrt(r1_c r2_c)``, which helps most when weights share one scale per tensor. Batch-norm is
folded into the Conv before (``passes.prepare``). ReLU6 and other bounded activations are not
homogeneous: such pairs are left alone and counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.node_index import NodeIndex, attributes, clip_bounds

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}
_S_MIN, _S_MAX = 1e-2, 1e2
_ROUNDS = 4  # chains (conv -> conv -> conv) settle in a few sweeps


@dataclass
class EqualizeReport:
    pairs: int = 0
    bounded: int = 0  # pairs joined by ReLU6-like activations, left alone


@dataclass
class _Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto
    depthwise: bool


def _clip_kind(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str:
    """'homogeneous' for Clip(0, none/inf), 'bounded' for Clip(0, M), else 'other'."""
    bounds = clip_bounds(node, inits)
    if bounds is None or bounds[0] != 0.0:
        return "other"
    return "homogeneous" if bounds[1] is None or np.isinf(bounds[1]) else "bounded"


def _pairs(model: onnx.ModelProto) -> tuple[list[_Pair], int]:
    index = NodeIndex(model.graph)
    inits = index.inits

    def only_reader(tensor: str) -> onnx.NodeProto | None:
        k = index.only_reader(tensor)
        return None if k is None else index.nodes[k]

    def own_weights(conv: onnx.NodeProto) -> bool:
        names = [t for t in conv.input[1:3] if t]
        return all(t in inits and index.uses(t) == 1 for t in names) and len(inits[conv.input[1]].dims) >= 3

    pairs, bounded = [], 0
    for first in index.nodes:
        if first.op_type != "Conv" or not own_weights(first):
            continue
        nxt = only_reader(first.output[0])
        if nxt is None:
            continue
        kind = "homogeneous"
        if nxt.op_type in HOMOGENEOUS:
            if nxt.op_type == "PRelu" and nxt.input[1] not in inits:
                continue
            act = nxt
        elif nxt.op_type == "Clip":
            kind, act = _clip_kind(nxt, inits), nxt
        elif nxt.op_type == "Conv":
            act = None
        else:
            continue
        second = nxt if act is None else only_reader(act.output[0])
        if second is None or second.op_type != "Conv" or second.input[0] != (act or first).output[0] or not own_weights(second):
            continue
        channels = inits[first.input[1]].dims[0]
        w2 = inits[second.input[1]].dims
        groups = attributes(second).get("group", 1)
        depthwise = groups == channels and w2[0] == channels and w2[1] == 1
        if not (groups == 1 and w2[1] == channels) and not depthwise:
            continue
        if kind == "bounded":
            bounded += 1
            continue
        if kind != "homogeneous":
            continue
        pairs.append(_Pair(first, second, depthwise))
    return pairs, bounded


def equalize(model: onnx.ModelProto) -> EqualizeReport:
    """Equalise every eligible Conv pair of ``model`` in place."""
    pairs, bounded = _pairs(model)
    if not pairs:
        return EqualizeReport(0, bounded)
    inits = {i.name: i for i in model.graph.initializer}
    values = {t: tensor_array(inits[t]).astype(np.float64)
              for p in pairs for t in (*p.first.input[1:3], p.second.input[1]) if t}
    for _ in range(_ROUNDS):
        for p in pairs:
            w1, w2 = values[p.first.input[1]], values[p.second.input[1]]
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = (np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if p.depthwise
                  else np.abs(w2).swapaxes(0, 1).reshape(w2.shape[1], -1).max(axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.sqrt(r1 / r2)
            s = np.where(np.isfinite(s) & (s > _S_MIN) & (s < _S_MAX), s, 1.0)
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            values[p.first.input[1]] = w1 / s.reshape(shape1)
            if len(p.first.input) > 2 and p.first.input[2]:
                values[p.first.input[2]] = values[p.first.input[2]] / s
            shape2 = (-1,) + (1,) * (w2.ndim - 1) if p.depthwise else (1, -1) + (1,) * (w2.ndim - 2)
            values[p.second.input[1]] = w2 * s.reshape(shape2)
    for name, value in values.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return EqualizeReport(len(pairs), bounded)
