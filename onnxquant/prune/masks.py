"""Which weights to zero: scores (magnitude or Wanda), then a cut by threshold, by sparsity
(per layer or global) or by an N:M pattern. Ties break by position, so masks are deterministic."""
from __future__ import annotations

import numpy as np

from onnxquant.prune.weights import PrunableWeight


def scores(weight: np.ndarray, layer: PrunableWeight, input_rms: np.ndarray | None = None) -> np.ndarray:
    """|w|, or Wanda's |w| times the RMS of the input feature it multiplies (Sun et al., 2023):
    a small weight on a loud input can matter more than a large one on a quiet input."""
    score = np.abs(weight.astype(np.float64))
    if input_rms is None:
        return score
    rms = np.asarray(input_rms, np.float64)
    if layer.op_type == "Conv":
        c_out, c_in_group = weight.shape[0], weight.shape[1]
        group_of_output = np.arange(c_out) // max(c_out // layer.groups, 1)
        channel = group_of_output[:, None] * c_in_group + np.arange(c_in_group)[None, :]
        factor = rms[channel].reshape(c_out, c_in_group, *([1] * (weight.ndim - 2)))
    else:
        shape = [1, 1]
        shape[layer.input_axis] = rms.size
        factor = rms.reshape(shape)
    return score * factor


def lowest(score: np.ndarray, count: int) -> np.ndarray:
    """Keep-mask with the ``count`` lowest scores zeroed (earlier position first on ties)."""
    keep = np.ones(score.size, bool)
    if count > 0:
        keep[np.argsort(score.ravel(), kind="stable")[:count]] = False
    return keep.reshape(score.shape)


def sparsity_mask(score: np.ndarray, sparsity: float) -> np.ndarray:
    return lowest(score, int(np.floor(sparsity * score.size)))


def global_masks(layer_scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One cut over every layer's scores together (layers in the given order break ties)."""
    names = list(layer_scores)
    flat = np.concatenate([layer_scores[n].ravel() for n in names]) if names else np.zeros(0)
    keep = lowest(flat, int(np.floor(sparsity * flat.size)))
    masks, start = {}, 0
    for name in names:
        size = layer_scores[name].size
        masks[name] = keep[start:start + size].reshape(layer_scores[name].shape)
        start += size
    return masks


def threshold_mask(weight: np.ndarray, threshold: float) -> np.ndarray:
    return np.abs(weight) > threshold


def nm_mask(score: np.ndarray, input_axis: int, n: int, m: int) -> np.ndarray | None:
    """Keep the ``n`` highest of every ``m`` consecutive weights along the input axis, for each
    output and kernel position (the layout sparse tensor cores expect); None if it does not divide."""
    if score.shape[input_axis] % m:
        return None
    moved = np.moveaxis(score, input_axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros_like(groups, bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, input_axis)
