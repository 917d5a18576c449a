"""4-bit weights for MatMul: block-wise int4, written as onnxruntime's ``MatMulNBits``.

Each column of the (K, N) weight is cut into blocks of ``block_size`` along K; each block gets
one float scale, codes are ``round(w / scale) + 8`` in 0..15 (symmetric, the default zero point
8), packed two per byte, low nibble first. onnxruntime's CPU kernel multiplies float
activations by these weights directly, so the weights stay 4-bit in memory as well as on disk.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.node_index import NodeIndex

MS_DOMAIN = "com.microsoft"
_QMAX = 7  # symmetric int4: -7..7 (the code 0, i.e. -8, is never used, so negation is exact)
# MatMulNBits computes with activations quantized to int8 per block (level 4): the fast MLAS
# path. Level 0 (float compute) measured slower than fp32 on MiniLM here (7.3 ms vs 6.5 ms).
_ACCURACY_LEVEL = 4


def block_scales(weight: np.ndarray, block_size: int) -> np.ndarray:
    """(N, K / block_size) scales of a (K, N) weight."""
    k, n = weight.shape
    blocks = weight.astype(np.float64).T.reshape(n, k // block_size, block_size)
    absmax = np.abs(blocks).max(axis=2)
    return np.where(absmax > 0, absmax / _QMAX, 1.0).astype(np.float32)


def quantize_int4(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes (N, K) in -7..7 and their (N, K / block_size) scales."""
    k, n = weight.shape
    scales = block_scales(weight, block_size)
    blocks = weight.astype(np.float64).T.reshape(n, k // block_size, block_size)
    codes = np.clip(np.rint(blocks / scales[..., None].astype(np.float64)), -_QMAX, _QMAX)
    return codes.reshape(n, k).astype(np.int8), scales


def dequantize_int4(codes: np.ndarray, scales: np.ndarray, block_size: int) -> np.ndarray:
    """The (K, N) float weight that ``MatMulNBits`` multiplies by."""
    n, k = codes.shape
    blocks = codes.reshape(n, k // block_size, block_size).astype(np.float32) * scales[..., None]
    return blocks.reshape(n, k).T


def int4_sqnr_db(weight: np.ndarray, block_size: int) -> float:
    """How well int4 keeps this weight: SQNR of the dequantized weight, in dB."""
    codes, scales = quantize_int4(weight, block_size)
    error = dequantize_int4(codes, scales, block_size).astype(np.float64) - weight
    noise = float(np.sum(error**2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(weight.astype(np.float64) ** 2)) / noise)


def eligible(weight_shape: tuple[int, ...], block_size: int) -> bool:
    return len(weight_shape) == 2 and weight_shape[0] % block_size == 0 and weight_shape[0] >= block_size


def _pack(codes: np.ndarray, block_size: int) -> np.ndarray:
    n, k = codes.shape
    unsigned = (codes.astype(np.int16) + 8).astype(np.uint8).reshape(n, k // block_size, block_size)
    return (unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)).astype(np.uint8)


def to_matmul_nbits(model: onnx.ModelProto, nodes: set[str], block_size: int) -> int:
    """Replace the named float MatMul nodes (weight = a 2-D initializer) by ``MatMulNBits``, in
    place. Returns how many were replaced; weights no other node reads are dropped."""
    graph = model.graph
    index = NodeIndex(graph)
    inits = index.inits
    uses = {w: index.uses(w) for w in inits}
    replaced, dropped = 0, set()
    new_nodes = []
    for node in graph.node:
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        if node.name not in nodes or w not in inits or not eligible(tuple(inits[w].dims), block_size):
            new_nodes.append(node)
            continue
        weight = tensor_array(inits[w])
        k, n = weight.shape
        codes, scales = quantize_int4(weight, block_size)
        packed_name, scales_name = f"{w}_int4", f"{w}_int4_scales"
        graph.initializer.extend([numpy_helper.from_array(_pack(codes, block_size), packed_name),
                                  numpy_helper.from_array(scales.reshape(-1), scales_name)])
        new_nodes.append(helper.make_node("MatMulNBits", [node.input[0], packed_name, scales_name], list(node.output),
                                          name=node.name, domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=block_size,
                                          accuracy_level=_ACCURACY_LEVEL))
        uses[w] -= 1
        if uses[w] == 0:
            dropped.add(w)
        replaced += 1
    if not replaced:
        return 0
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return replaced
