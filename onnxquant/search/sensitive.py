"""Which quantized layers add the most error, from one quantized model: the recipe search gives
the worst few higher precision.

Quantizing each layer alone and scoring the model (``onnxquant sensitivity``) costs one build per
layer, a minute on a small CNN; here the float and the quantized model each run once on the
held-out samples with every layer's output fetched, and a layer is ranked by the noise it adds
over its cleanest input (``layer_errors``' own SQNR): the layer that does the damage, not every
layer after it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxquant.layer_errors import tensor_errors


def rank_by_added_noise(reference: onnx.ModelProto, quantized: onnx.ModelProto, layers: Iterable[str],
                        samples: list[dict[str, np.ndarray]]) -> list[str]:
    """``layers`` (node names of ``reference``), the most noise added first; ties in graph order."""
    wanted = set(layers)
    order = {node.name: k for k, node in enumerate(reference.graph.node)}
    outputs = {node.output[0]: node.name for node in reference.graph.node if node.name in wanted and node.output}
    errors = tensor_errors(reference, quantized, list(outputs), samples)
    own = {outputs[e.tensor]: e.own_sqnr_db for e in errors if e.tensor in outputs}
    return sorted(own, key=lambda name: (own[name], order[name]))


def within_caps(ranked: list[str], sizes: Mapping[str, int], most: int, max_bytes: float) -> list[str]:
    """The ranked layers, worst first, that fit together in ``most`` layers and ``max_bytes``
    weight bytes (a layer too large to fit is passed over, not the end of the list)."""
    chosen: list[str] = []
    used = 0
    for name in ranked:
        if len(chosen) >= most:
            break
        size = sizes.get(name, 0)
        if used + size <= max_bytes:
            chosen.append(name)
            used += size
    return chosen
