"""How big a model is on disk and compressed, and sparse storage of pruned initializers."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import tensor_array

# Deflate at level 9, as zip and most app bundles store files; deterministic for the same bytes.
COMPRESSION_LEVEL = 9


def compressed_size(data: bytes) -> int:
    """Bytes after deflate: what a pruned model costs in a zip bundle or an app download."""
    return len(zlib.compress(data, COMPRESSION_LEVEL))


def store_sparse(model: onnx.ModelProto) -> int:
    """Move float initializers whose COO form (values plus int64 indices) is smaller into
    ``graph.sparse_initializer``, in place; onnxruntime densifies them when it loads the model.
    Returns how many were moved. Only worth it below about a third of the weights non-zero."""
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    keep, moved = [], 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs or init.data_location == 1:
            keep.append(init)
            continue
        dense = tensor_array(init)
        nonzero = np.flatnonzero(dense)
        if dense.size < 16 or nonzero.size * (4 + 8) >= dense.size * 4:
            keep.append(init)
            continue
        values = numpy_helper.from_array(dense.ravel()[nonzero].astype(np.float32), init.name)
        indices = numpy_helper.from_array(nonzero.astype(np.int64), f"{init.name}_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(dense.shape)))
        moved += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return moved
