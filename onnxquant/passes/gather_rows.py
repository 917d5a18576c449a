"""Embedding tables stored 8-bit with one scale per row, as onnxruntime's ``GatherBlockQuantized``.

An embedding table read through ``DequantizeLinear -> Gather`` has one scale for the whole
table: rows differ in range (frequent words, positions), so most rows use a fraction of the 256
levels. On all-MiniLM-L6-v2 the three tables cost cosine 0.0006 that way, a fifth of the int8
model's whole error. onnxruntime's CPU provider has ``com.microsoft.GatherBlockQuantized``:
uint8 data (zero point 128), float scales per block of a row; with the block as long as the row
(a power of two, at least 16, partial blocks allowed) that is one scale per row. The table stays
one byte per value (plus 4 bytes per row), and the lookup returns float rows, so the sum of the
embeddings and its LayerNormalization run in float, as in fp32.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
_MIN_BLOCK = 16  # GatherBlockQuantized's smallest block


def row_block(columns: int) -> int:
    """The block size that makes one block of a row: the next power of two, at least 16."""
    return max(_MIN_BLOCK, 1 << max(columns - 1, 0).bit_length())


# Rows quantized at a time: the float64 work arrays stay a few MB (all-MiniLM-L6-v2's 47 MB word
# table at once took four 94 MB temporaries, the run's peak memory).
ROWS_AT_A_TIME = 2048


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 rows around 128 and one float32 scale per row (shape (rows, 1)): symmetric, -127..127.
    Each row on its own, so quantizing the rows a block at a time gives the same bytes."""
    q = np.empty(table.shape, np.uint8)
    scale = np.empty((table.shape[0], 1), np.float32)
    for start in range(0, table.shape[0], ROWS_AT_A_TIME):
        rows = slice(start, start + ROWS_AT_A_TIME)
        block = table[rows].astype(np.float64)
        absmax = np.abs(block).max(axis=1, keepdims=True)
        scale[rows] = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        q[rows] = np.clip(np.rint(block / scale[rows].astype(np.float64)), -127, 127) + 128
    return q, scale


def gather_row_quantized(node: onnx.NodeProto, table: np.ndarray, data_name: str,
                         scale_name: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The ``GatherBlockQuantized`` that replaces ``node`` (a Gather of the 2-D ``table`` on axis
    0), with its two new initializers."""
    q, scale = quantize_rows(table)
    replacement = helper.make_node(
        "GatherBlockQuantized", [data_name, node.input[1], scale_name], list(node.output), name=node.name,
        domain=MS_DOMAIN, bits=8, block_size=row_block(table.shape[1]), gather_axis=0, quantize_axis=1)
    return replacement, [numpy_helper.from_array(q, data_name), numpy_helper.from_array(scale, scale_name)]


def row_quantizable(node: onnx.NodeProto, table: onnx.TensorProto | None) -> bool:
    """A Gather on axis 0 of a 2-D float32 table with at least one column."""
    if node.op_type != "Gather" or table is None or table.data_type != onnx.TensorProto.FLOAT:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis == 0 and len(table.dims) == 2 and table.dims[1] > 0
