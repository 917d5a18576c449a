"""Layer inputs as matrices and their Gram matrices ``X X^T``, streamed over the samples.

Learned rounding and pruning reconstruction both minimise ``||(W' - W) X||^2`` for one layer;
that only needs ``X X^T`` (im2col patches for a Conv), so memory stays flat in the sample count.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant.passes.node_index import attributes
from onnxquant.recovery.probe import Probe, run_probe


@dataclass
class LinearLayer:
    """A Conv (4-D weight), Gemm or MatMul seen as rows of weights times input columns."""

    node: onnx.NodeProto
    weight: str
    groups: int = 1
    conv: bool = False
    rows_first: bool = True  # weight stored (out, in) [Gemm transB, Conv] rather than (in, out)
    gram: np.ndarray | None = None  # (groups, K, K), summed over positions
    sums: np.ndarray | None = None  # (groups, K): summed inputs, for a bias column
    count: int = 0  # positions summed


def linear_layer(node: onnx.NodeProto, weight: str, rank: int) -> LinearLayer | None:
    """The layer's layout, or None where it is not a plain 2-D product (auto_pad, batched MatMul)."""
    attrs = attributes(node)
    if node.op_type == "Conv" and rank == 4 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        return LinearLayer(node, weight, groups=int(attrs.get("group", 1)), conv=True)
    if node.op_type == "Gemm" and rank == 2:
        return LinearLayer(node, weight, rows_first=bool(attrs.get("transB", 0)))
    if node.op_type == "MatMul" and rank == 2:
        return LinearLayer(node, weight, rows_first=False)
    return None


def patches(x: np.ndarray, layer: LinearLayer, kernel: tuple[int, int]) -> np.ndarray:
    """im2col: (groups, positions, K) patches of a (N, C, H, W) input, K ordered (c, kh, kw)."""
    attrs = attributes(layer.node)
    kh, kw = kernel
    dh, dw = attrs.get("dilations", [1, 1])
    sh, sw = attrs.get("strides", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = win.shape[:4]
    g = layer.groups
    win = win.reshape(n, g, c // g, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(g, n * ho * wo, (c // g) * kh * kw)


def rows(weight: np.ndarray, layer: LinearLayer) -> np.ndarray:
    """The weight as (groups, out per group, K): one row per output channel."""
    if layer.conv:
        return weight.reshape(layer.groups, weight.shape[0] // layer.groups, -1)
    return (weight if layer.rows_first else weight.T)[None]


def from_rows(matrix: np.ndarray, layer: LinearLayer, shape: tuple[int, ...]) -> np.ndarray:
    if layer.conv:
        return matrix.reshape(shape)
    return matrix[0] if layer.rows_first else matrix[0].T


def accumulate(model: onnx.ModelProto, layers: list[LinearLayer], shapes: dict[str, tuple[int, ...]],
               samples: Iterable[dict[str, np.ndarray]], max_samples: int | None = None,
               with_sums: bool = False) -> None:
    """Fill each layer's ``gram`` (and ``sums``) from its inputs over ``samples``.

    ``shapes``: weight shapes by initializer name (a Conv's kernel size).
    """
    if not layers:
        return
    probe = Probe(prefix="_oq_gram")
    probe.outputs.extend(sorted({layer.node.input[0] for layer in layers}))
    for values in run_probe(model, probe, samples, max_samples):
        for layer in layers:
            x = values[layer.node.input[0]].astype(np.float64)
            if layer.conv:
                shape = shapes[layer.weight]
                p = patches(x, layer, (shape[2], shape[3]))
            else:
                p = x.reshape(1, -1, x.shape[-1])
            gram = np.matmul(p.transpose(0, 2, 1), p)
            layer.gram = gram if layer.gram is None else layer.gram + gram
            if with_sums:
                total = p.sum(axis=1)
                layer.sums = total if layer.sums is None else layer.sums + total
            layer.count += p.shape[1]
