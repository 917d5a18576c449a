"""Refit the weights a pruning mask keeps, so each layer's output moves as little as possible.

Zeroing weights shifts a layer's output; the kept weights (and the bias) can take up much of
that. Per output row this solves ``min ||W X + b - (W' X + b')||^2`` over the calibration
inputs ``X`` with ``W'`` zero outside the mask (the least-squares step of SparseGPT, Frantar &
Alistarh 2023, one row at a time). It only needs the Gram matrix of ``[X; 1]``, streamed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.prune.weights import PrunableWeight
from onnxquant.recovery.gram import (
    LinearLayer,
    accumulate,
    from_rows,
    linear_layer,
    rows,
)

DAMPING = 0.01  # of the mean diagonal, added to the Gram matrix (as SparseGPT does) for stability


def _solve_rows(w: np.ndarray, keep: np.ndarray, bias: np.ndarray, gram: np.ndarray, sums: np.ndarray,
                count: int) -> tuple[np.ndarray, np.ndarray]:
    """Refit the kept weights and the bias of each row of one group: (rows, K), (rows,)."""
    k = w.shape[1]
    aug = np.empty((k + 1, k + 1))
    aug[:k, :k], aug[:k, k], aug[k, :k], aug[k, k] = gram, sums, sums, count
    aug /= max(count, 1)
    aug[np.arange(k), np.arange(k)] += DAMPING * np.mean(np.diag(aug)[:k]) + 1e-12
    target = aug[:, :k] @ w.T + aug[:, k:] * bias[None, :]  # (K+1, rows): H_aug @ [w; b]
    new_w, new_b = np.zeros_like(w), bias.copy()
    for r in range(w.shape[0]):
        kept = np.flatnonzero(keep[r])
        if kept.size == 0:
            continue  # a zeroed channel stays zero (and is removed later)
        free = np.append(kept, k)
        solution = np.linalg.solve(aug[np.ix_(free, free)], target[free, r])
        new_w[r, kept], new_b[r] = solution[:-1], solution[-1]
    return new_w, new_b


def input_grams(model: onnx.ModelProto, layers: list[PrunableWeight], samples: Iterable[dict[str, np.ndarray]],
                max_samples: int | None = None) -> dict[str, LinearLayer]:
    """Per layer that can be refit (by node name): the Gram matrix of its inputs on the unpruned
    ``model``, computed once so a sparsity search reuses it."""
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    linear: dict[str, LinearLayer] = {}
    for layer in layers:
        node = by_name[layer.node]
        found = linear_layer(node, layer.initializer, len(layer.shape))
        has_bias = len(node.input) > 2 and node.input[2] in inits
        if found is not None and (has_bias or node.op_type in ("Conv", "Gemm")):
            linear[layer.node] = found
    shapes = {layer.initializer: layer.shape for layer in layers}
    accumulate(model, list(linear.values()), shapes, samples, max_samples, with_sums=True)
    return linear


def reconstruct(model: onnx.ModelProto, layers: list[PrunableWeight], original: dict[str, np.ndarray],
                grams: dict[str, LinearLayer], progress: Callable[[int, int | None], None] | None = None) -> int:
    """Refit, in place, the pruned weights of ``layers`` (``original``: their weights before
    pruning) so each reproduces the original layer on its unpruned inputs (``input_grams``).
    Returns how many layers were refit.

    A layer gets a bias if it had none and its row means moved (Conv and Gemm only).
    """
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    refit = 0
    for done, layer in enumerate(layers):
        if progress is not None:
            progress(done, len(layers))
        lin = grams.get(layer.node)
        if lin is None or lin.gram is None:
            continue
        node = by_name[layer.node]
        pruned = tensor_array(inits[layer.initializer])
        out_channels = pruned.shape[layer.output_axis]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = (tensor_array(inits[bias_name]).astype(np.float64).ravel() if bias_name
                else np.zeros(out_channels))
        if bias.size != out_channels:
            continue  # a broadcast bias cannot take per-channel corrections
        w_rows, keep_rows = rows(original[layer.initializer].astype(np.float64), lin), rows(pruned != 0, lin)
        per_group = w_rows.shape[1]
        new_rows, new_bias = np.empty_like(w_rows), bias.copy()
        for g in range(w_rows.shape[0]):
            span = slice(g * per_group, (g + 1) * per_group)
            new_rows[g], new_bias[span] = _solve_rows(w_rows[g], keep_rows[g], bias[span], lin.gram[g], lin.sums[g],
                                                      lin.count)
        weight = from_rows(new_rows, lin, pruned.shape).astype(pruned.dtype)
        inits[layer.initializer].CopyFrom(numpy_helper.from_array(weight, layer.initializer))
        if bias_name:
            inits[bias_name].CopyFrom(numpy_helper.from_array(new_bias.astype(np.float32).reshape(inits[bias_name].dims),
                                                              bias_name))
        elif np.any(new_bias):
            name = f"{layer.initializer}_pruning_bias"
            model.graph.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), name))
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
        refit += 1
    if progress is not None:
        progress(len(layers), len(layers))
    return refit
