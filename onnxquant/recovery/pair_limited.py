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

Which neighbours the kernel pairs depends on how it lays out the reduction axis: along K for
Gemm and 2-D MatMul weights, along the input channels for a 1x1 Conv. For a larger Conv kernel
(one group) the limit is met in both layouts onnxruntime may use, channels innermost (its NHWC
integer convolutions) and channels outermost. Other layers (grouped or depthwise convolutions,
whose kernels accumulate in 32 bits, and batched MatMul weights) keep the recipe's weights.
Measured on EfficientNet-Lite0 here: onnxruntime's fused model and the unfused QDQ graph agree
as closely as with 7-bit weights, against 13x further apart with plain 8-bit ones.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import onnx

from onnxquant.model_io import tensor_array
from onnxquant.planner import QuantPlan, refresh_bias_params
from onnxquant.qparams import QParams
from onnxquant.pipeline.clock import timed

# |w_k| + |w_k+1| of same-sign neighbours: 255 * 128 = 32640 fits a signed 16-bit lane.
PAIR_LIMIT = 128
# Largest |q| a channel may use, from the 7-bit grid (every pair within the limit by construction)
# up to the full int8 grid.
CANDIDATE_MAXIMA = (64, 72, 80, 88, 96, 104, 112, 120, 127)


def limited_rounding(targets: np.ndarray, current: np.ndarray | None = None) -> np.ndarray:
    """Integers nearest ``targets`` (rows x K, in units of the scale, within +-127) with every
    same-sign neighbour pair ``(2j, 2j+1)`` along K summing to at most ``PAIR_LIMIT`` in magnitude.
    ``current``: integers already limited in another order of K; they are only ever made smaller
    in magnitude here, so the limits met before still hold."""
    q = np.clip(np.rint(targets), -127, 127).astype(np.int32) if current is None else current.astype(np.int32)
    even = q.shape[1] - q.shape[1] % 2
    a, b = q[:, 0:even:2], q[:, 1:even:2]
    over = (a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)
    if over.any():
        ta, tb = np.abs(targets[:, 0:even:2]), np.abs(targets[:, 1:even:2])
        # the nearest point of x + y = PAIR_LIMIT to (ta, tb), rounded onto the integers
        x = np.clip(np.rint((ta - tb + PAIR_LIMIT) / 2), 0, np.abs(a)).astype(np.int32)
        y = np.minimum(np.abs(b), PAIR_LIMIT - x)
        sign = np.sign(a)
        q[:, 0:even:2] = np.where(over, sign * x, a)
        q[:, 1:even:2] = np.where(over, sign * y, b)
    return q


def limited_weight(targets: np.ndarray, orders: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``limited_rounding`` of a weight laid out output channel first (``targets``: Cout x ...),
    for each of ``orders``: how a kernel may lay out the rest of the axes along K (a permutation
    of them, innermost last), so that the limit holds whichever of them the kernel uses."""
    q = None
    for order in orders:
        perm = (0, *(1 + a for a in order))
        moved = targets.transpose(perm)
        rows = moved.reshape(moved.shape[0], -1)
        current = None if q is None else q.transpose(perm).reshape(rows.shape)
        q = limited_rounding(rows, current).reshape(moved.shape).transpose(np.argsort(perm))
    return q


def pair_limited_scales(weight: np.ndarray, orders: tuple[tuple[int, ...], ...] = ((0,),)) -> np.ndarray:
    """Per output channel of ``weight`` (Cout x ...; ``orders`` as for ``limited_weight``): the
    scale whose pair-limited rounding reconstructs the channel best."""
    weight = weight.astype(np.float64)
    flat = weight.reshape(weight.shape[0], -1)
    absmax = np.abs(flat).max(axis=1)
    absmax = np.where(absmax > 0, absmax, 1.0)
    best_scale = best_err = None
    for top in CANDIDATE_MAXIMA:
        scale = (absmax / top).astype(np.float32)
        s = scale.astype(np.float64).reshape(-1, *([1] * (weight.ndim - 1)))
        err = ((limited_weight(weight / s, orders) * s - weight) ** 2).reshape(len(scale), -1).sum(axis=1)
        if best_err is None:
            best_scale, best_err = scale, err
            continue
        better = err < best_err
        best_scale[better], best_err[better] = scale[better], err[better]
    return best_scale


# Scales chosen before, by the weight's bytes and the orders: the recipe search's trials plan
# from one calibrated model, and its weights and their scales are the same in every trial that
# changes only activation ranges (EfficientNet-Lite0: the choice took a fifth of each trial).
_CHOSEN_SCALES: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CHOSEN_SCALES_MAX = 4096  # entries, each one float per output channel
_CHOSEN_SCALES_LOCK = threading.Lock()  # callers of the Python API may quantize in threads


def chosen_scales(weight: np.ndarray, orders: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``pair_limited_scales``, computed once for the same weight bytes and orders (a copy: the
    caller may change it)."""
    # (keyed by the values; computed on the array as given: its layout decides numpy's summation order)
    key = (hashlib.sha256(np.ascontiguousarray(weight).tobytes()).hexdigest(), weight.dtype.str, weight.shape,
           weight.strides, orders)
    with _CHOSEN_SCALES_LOCK:
        found = _CHOSEN_SCALES.get(key)
        if found is not None:
            _CHOSEN_SCALES.move_to_end(key)
    if found is None:  # (computed outside the lock: two threads may both compute it, to the same values)
        found = pair_limited_scales(weight, orders)
        with _CHOSEN_SCALES_LOCK:
            _CHOSEN_SCALES[key] = found
            if len(_CHOSEN_SCALES) > _CHOSEN_SCALES_MAX:
                _CHOSEN_SCALES.popitem(last=False)
    return found.copy()


def _orders(node: onnx.NodeProto, shape: tuple[int, ...], axis: int | None) -> tuple[tuple[int, ...], ...]:
    """The orders of K (over the weight's axes after the output channel) the kernel may pair in;
    none when this layer is not limited."""
    if axis is None:
        return ()
    if node.op_type in ("Gemm", "MatMul"):
        return ((0,),) if len(shape) == 2 else ()
    if node.op_type == "Conv" and axis == 0 and next((a.i for a in node.attribute if a.name == "group"), 1) == 1:
        spatial = tuple(range(1, len(shape) - 1))
        if all(d == 1 for d in shape[2:]):
            return ((0, *spatial),)  # 1x1: K is the input channels whatever the layout
        # channels innermost (onnxruntime's NHWC integer convolutions) and channels outermost
        return ((*spatial, 0), (0, *spatial))
    return ()


@timed("pair_limits")
def limit_pairs(model: onnx.ModelProto, plan: QuantPlan, skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Give the plan's 7-bit int8 weights of eligible layers (not in ``skip``) pair-limited 8-bit
    integers: new per-channel scales in ``plan.weights``, the integers in ``plan.integers`` (the
    float weights stay the reference bias correction measures against), and bias params that
    follow the new scales. The names of the layers changed."""
    sel = plan.selection
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    bias_of = {(node, weight): bias for (node, bias), weight in sel.biases.items()}
    changed = []
    # One weight read by many layers (an RNN unrolled over time steps) gets its integers once.
    made: dict[tuple, np.ndarray] = {}
    for (name, weight), (_, axis, reduce) in sorted(sel.weights.items()):
        params = plan.weights.get((name, weight))
        node = nodes.get(name)
        if (not reduce or node is None or params is None or params.dtype != "int8" or weight not in inits
                or name in skip):
            continue
        value = tensor_array(inits[weight])
        orders = _orders(node, tuple(value.shape), axis)
        if not orders:
            continue
        channels_first = np.moveaxis(value, axis, 0).astype(np.float64)
        scale = chosen_scales(channels_first, orders)
        plan.weights[(name, weight)] = QParams(scale, np.zeros(scale.shape, np.int8), "int8", axis)
        bias = bias_of.get((name, weight))
        if bias is not None:  # (may raise the scale of a near-zero channel so that its bias fits int32)
            refresh_bias_params(model, plan, name, bias, x=node.input[0])
        final = plan.weights[(name, weight)].scale
        key = (weight, axis, orders, np.asarray(final).tobytes())
        if key not in made:
            q = limited_weight(channels_first / final.astype(np.float64).reshape(-1, *([1] * (value.ndim - 1))), orders)
            made[key] = np.ascontiguousarray(np.moveaxis(q.astype(np.int8), 0, axis))
        plan.integers[(name, weight)] = (made[key], final.copy())
        changed.append(name)
    return changed
