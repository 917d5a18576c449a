"""Full 8-bit int8 weights that onnxruntime's u8s8 kernels on x86 without VNNI cannot saturate.

There the u8s8 GEMM (``vpmaddubsw``) adds the products of two neighbouring elements along the
reduction axis in a saturating 16-bit lane: ``a_k * w_k + a_k+1 * w_k+1`` with uint8
activations up to 255. Neighbours of opposite sign cannot overflow it (255 * 127 < 32767), and
same-sign neighbours cannot when ``|w_k| + |w_k+1| <= 128`` (255 * 128 = 32640). 7-bit weights
(``reduce_range``) keep every weight within 64 to be sure, which halves the resolution of all of
them. Here each output channel keeps full 8-bit resolution where it can: its scale is the one of
a few candidates (from the 7-bit one to the full 8-bit one) that reconstructs the channel best
once the neighbour pairs over the limit are brought back to it, each pair to the nearest
integers that sum to the limit. The 7-bit scale is a candidate, so no channel is worse than
7-bit. The kernels then compute exactly what the QDQ graph says, for any input.

Which neighbours the kernel pairs depends on how it lays out the reduction axis, so only layers
whose axis is unambiguous are limited: Gemm and 2-D MatMul weights (along K) and 1x1 Conv with
one group (along the input channels). Other layers keep the recipe's 7-bit weights.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxquant.model_io import tensor_array
from onnxquant.planner import QuantPlan, refresh_bias_params
from onnxquant.qparams import QParams

# |w_k| + |w_k+1| of same-sign neighbours: 255 * 128 = 32640 fits a signed 16-bit lane.
PAIR_LIMIT = 128
# Largest |q| a channel may use, from the 7-bit grid (every pair within the limit by construction)
# up to the full int8 grid.
CANDIDATE_MAXIMA = (64, 72, 80, 88, 96, 104, 112, 120, 127)


def limited_rounding(targets: np.ndarray) -> np.ndarray:
    """Integers nearest ``targets`` (rows x K, in units of the scale, within +-127) with every
    same-sign neighbour pair ``(2j, 2j+1)`` along K summing to at most ``PAIR_LIMIT`` in magnitude."""
    q = np.clip(np.rint(targets), -127, 127).astype(np.int32)
    even = q.shape[1] - q.shape[1] % 2
    a, b = q[:, 0:even:2], q[:, 1:even:2]
    over = (a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)
    if over.any():
        ta, tb = np.abs(targets[:, 0:even:2]), np.abs(targets[:, 1:even:2])
        # the nearest point of x + y = PAIR_LIMIT to (ta, tb), rounded onto the integers
        x = np.clip(np.rint((ta - tb + PAIR_LIMIT) / 2), PAIR_LIMIT - 127, 127).astype(np.int32)
        sign = np.sign(a)
        q[:, 0:even:2] = np.where(over, sign * x, a)
        q[:, 1:even:2] = np.where(over, sign * (PAIR_LIMIT - x), b)
    return q


def pair_limited_scales(rows: np.ndarray) -> np.ndarray:
    """Per row (output channel) of ``rows`` (rows x K, K in the kernel's order): the scale whose
    pair-limited rounding reconstructs the row best."""
    rows = rows.astype(np.float64)
    absmax = np.abs(rows).max(axis=1)
    absmax = np.where(absmax > 0, absmax, 1.0)
    best_scale = best_err = None
    for top in CANDIDATE_MAXIMA:
        scale = (absmax / top).astype(np.float32)
        s = scale.astype(np.float64)[:, None]
        err = ((limited_rounding(rows / s) * s - rows) ** 2).sum(axis=1)
        if best_err is None:
            best_scale, best_err = scale, err
            continue
        better = err < best_err
        best_scale[better], best_err[better] = scale[better], err[better]
    return best_scale


def _rows_view(node: onnx.NodeProto, shape: tuple[int, ...], axis: int | None) -> bool:
    """Whether this layer's weight is laid out as (output channels, K) in an order the kernel pairs."""
    if axis is None:
        return False
    if node.op_type in ("Gemm", "MatMul"):
        return len(shape) == 2
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return group == 1 and axis == 0 and all(d == 1 for d in shape[2:])
    return False


def limit_pairs(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """Give the plan's 7-bit int8 weights of eligible layers pair-limited 8-bit integers: new
    per-channel scales in ``plan.weights``, the integers in ``plan.integers`` (the float weights
    stay the reference bias correction measures against), and bias params that follow the new
    scales. The names of the layers changed."""
    sel = plan.selection
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    bias_of = {(node, weight): bias for (node, bias), weight in sel.biases.items()}
    changed = []
    for (name, weight), (_, axis, reduce) in sorted(sel.weights.items()):
        params = plan.weights.get((name, weight))
        node = nodes.get(name)
        if not reduce or node is None or params is None or params.dtype != "int8" or weight not in inits:
            continue
        value = tensor_array(inits[weight])
        if not _rows_view(node, tuple(value.shape), axis):
            continue
        moved = np.moveaxis(value, axis, 0)
        rows = moved.reshape(moved.shape[0], -1).astype(np.float64)
        scale = pair_limited_scales(rows)
        plan.weights[(name, weight)] = QParams(scale, np.zeros(scale.shape, np.int8), "int8", axis)
        bias = bias_of.get((name, weight))
        if bias is not None:  # (may raise the scale of a near-zero channel so that its bias fits int32)
            refresh_bias_params(model, plan, name, bias, x=node.input[0])
        final = plan.weights[(name, weight)].scale.astype(np.float64)[:, None]
        q = limited_rounding(rows / final).astype(np.int8)
        plan.integers[(name, weight)] = np.ascontiguousarray(np.moveaxis(q.reshape(moved.shape), 0, axis))
        changed.append(name)
    return changed
