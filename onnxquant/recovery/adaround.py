"""Learned rounding of weights (AdaRound, Nagel et al., 2020), with numpy only.

Rounding each weight to the nearest integer is not what minimises a layer's output error:
rounding some weights the other way can cancel errors between them. For each layer this pass
learns, per weight, whether to round down or up, minimising ``||(W~ - W) X||^2`` over the
calibration inputs ``X`` plus a regulariser that pushes every choice to 0 or 1.

The reconstruction term only needs the Gram matrix ``X X^T`` of the layer's input (im2col
patches for a Conv), which is accumulated while streaming the samples, so memory does not grow
with the sample count and no torch is needed. Gradients are clipped by global norm before each
Adam step. The result is kept only if it reconstructs better than nearest rounding.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.node_index import NodeIndex
from onnxquant.planner import QuantPlan
from onnxquant.qparams import QParams, qrange
from onnxquant.recovery.gram import (
    LinearLayer,
    accumulate,
    from_rows,
    linear_layer,
    rows,
)

_ZETA, _GAMMA = 1.1, -0.1  # rectified sigmoid stretch (the paper's values)
_LR = 0.05
_CLIP_NORM = 1.0
_REG = 10.0  # regulariser weight; the reconstruction term is 1 at nearest rounding
_WARMUP = 0.2  # fraction of iterations without the regulariser
_BETA = (20.0, 2.0)


@dataclass
class _Layer(LinearLayer):
    params: QParams | None = None
    qmin: int = 0
    qmax: int = 0


@dataclass
class AdaRoundReport:
    optimized: list[str] = field(default_factory=list)  # learned rounding kept
    unchanged: list[str] = field(default_factory=list)  # nearest rounding was as good
    skipped: list[str] = field(default_factory=list)  # the time budget ran out first
    gain_db: dict[str, float] = field(default_factory=dict)  # reconstruction gain per layer
    # weight name -> its float value before this pass overwrote it (bias correction's reference)
    originals: dict[str, np.ndarray] = field(default_factory=dict)


def _layers(model: onnx.ModelProto, plan: QuantPlan) -> list[_Layer]:
    index = NodeIndex(model.graph)
    by_name = {n.name: n for n in index.nodes}
    inits = index.inits
    layers = []
    for (name, w), (_, _, reduce) in sorted(plan.selection.weights.items()):
        node = by_name[name]
        params = plan.weights.get((name, w))
        if params is None or node.input[0] not in plan.activations or w not in inits or index.uses(w) != 1:
            continue
        qmin, qmax = qrange(params.dtype, reduce)
        if qmin >= 0:
            continue  # unsigned symmetric weights: zero point 128, not handled here
        qmin = -qmax  # symmetric weights use -qmax..qmax
        linear = linear_layer(node, w, len(inits[w].dims))
        if linear is not None:
            layers.append(_Layer(**vars(linear), params=params, qmin=qmin, qmax=qmax))
    return layers


def _row_scales(layer: _Layer, rows_shape: tuple[int, ...]) -> np.ndarray:
    scale = np.asarray(layer.params.scale, np.float64)
    if scale.ndim == 0:
        return np.full(rows_shape[:2] + (1,), float(scale))
    return scale.reshape(rows_shape[0], rows_shape[1], 1)


def _optimize(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, qmin: int, qmax: int,
              iterations: int) -> tuple[np.ndarray, float, float]:
    """Integer weights (same shape as ``w``) and the relative errors of nearest and learned rounding.

    The error is measured in float64; the iterations run in float32, twice as fast.
    """
    scaled = w / scale
    floor = np.floor(scaled)
    nearest = np.clip(np.rint(scaled), qmin, qmax)

    def recon(q: np.ndarray) -> float:
        delta = q * scale - w
        return float(np.sum((delta @ gram) * delta))

    signal = max(float(np.sum((w @ gram) * w)), 1e-30)
    base = recon(nearest)
    if base <= 1e-12 * signal:
        return nearest, base / signal, base / signal
    rest = np.clip(scaled - floor, 0.01, 0.99)
    v = (-np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1.0)).astype(np.float32)  # h(v) == fraction at start
    m, s2 = np.zeros_like(v), np.zeros_like(v)
    w32, scale32, floor32, gram32 = (a.astype(np.float32) for a in (w, scale, floor, gram))
    gain = np.float32(2.0 / base)
    warm = int(iterations * _WARMUP)
    for step in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * (_ZETA - _GAMMA) + _GAMMA
        h = np.clip(raw, 0.0, 1.0)
        q = floor32 + h
        inside = (q >= qmin) & (q <= qmax)
        delta = np.clip(q, qmin, qmax) * scale32 - w32
        grad_h = gain * (delta @ gram32) * scale32 * inside
        if step > warm:
            beta = _BETA[1] + (_BETA[0] - _BETA[1]) * (1 - (step - warm) / max(iterations - warm, 1))
            t = 2.0 * h - 1.0
            grad_h += np.float32(_REG / h.size * -2.0 * beta) * np.abs(t) ** np.float32(beta - 1.0) * np.sign(t)
        grad = grad_h * sig * (1.0 - sig) * (_ZETA - _GAMMA) * ((raw > 0.0) & (raw < 1.0))
        norm = float(np.linalg.norm(grad))
        if norm > _CLIP_NORM:
            grad *= _CLIP_NORM / norm
        m = 0.9 * m + 0.1 * grad
        s2 = 0.999 * s2 + 0.001 * grad * grad
        v -= _LR * (m / (1 - 0.9**step)) / (np.sqrt(s2 / (1 - 0.999**step)) + 1e-8)
    raw = 1.0 / (1.0 + np.exp(-v.astype(np.float64))) * (_ZETA - _GAMMA) + _GAMMA
    learned = np.clip(floor + (raw >= 0.5), qmin, qmax)
    return learned, base / signal, recon(learned) / signal


def adaround(model: onnx.ModelProto, plan: QuantPlan, samples: Iterable[dict[str, np.ndarray]],
             iterations: int, seconds: float | None = None, max_samples: int | None = None) -> AdaRoundReport:
    """Learn the rounding of every selected weight; chosen values are written into ``model``'s
    float weights as exact multiples of their scales, so the rewrite quantizes them to the
    learned integers."""
    report = AdaRoundReport()
    layers = _layers(model, plan)
    if not layers:
        return report
    inits = {i.name: i for i in model.graph.initializer}
    weights = {layer.weight: tensor_array(inits[layer.weight]).astype(np.float64) for layer in layers}
    accumulate(model, layers, {name: w.shape for name, w in weights.items()}, samples, max_samples)
    started = time.perf_counter()
    for layer in layers:
        name = layer.node.name
        if layer.gram is None:
            continue
        if seconds is not None and time.perf_counter() - started > seconds:
            report.skipped.append(name)
            continue
        w = weights[layer.weight]
        rows_ = rows(w, layer)
        scale = _row_scales(layer, rows_.shape)
        q, before, after = _optimize(rows_, scale, layer.gram / max(layer.count, 1), layer.qmin, layer.qmax, iterations)
        if after >= before:
            report.unchanged.append(name)
            continue
        value = from_rows(q * scale, layer, w.shape).astype(np.float32)
        report.originals[layer.weight] = w.astype(np.float32)
        inits[layer.weight].CopyFrom(numpy_helper.from_array(value, layer.weight))
        report.optimized.append(name)
        report.gain_db[name] = 10 * np.log10(before / after) if after > 0 else float("inf")
    return report
