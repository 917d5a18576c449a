"""Per-tensor error of a quantized model against its float original (per-layer debugging).

Both models run on the same samples with every quantized tensor fetched; for each tensor the
signal-to-quantization-noise ratio (SQNR) is accumulated over samples. A tensor's SQNR is the
error accumulated up to it. Its "own" SQNR counts only the relative noise it adds over the
cleanest input of the node that produced it: that points at the layer that does the damage
rather than at every layer after it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxquant.calibration.collector import augmented_bytes, make_session
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.passes.node_index import NodeIndex


@dataclass
class TensorError:
    tensor: str
    node: str  # the node producing the tensor ("" for a graph input)
    op_type: str
    sqnr_db: float  # error accumulated up to this tensor
    own_sqnr_db: float  # SQNR of the noise this tensor adds over its producer's cleanest input

    def to_dict(self) -> dict[str, Any]:
        def finite(v: float) -> float | str:
            return round(v, 3) if math.isfinite(v) else ("inf" if v > 0 else "-inf")

        return {"tensor": self.tensor, "node": self.node, "op_type": self.op_type,
                "sqnr_db": finite(self.sqnr_db), "own_sqnr_db": finite(self.own_sqnr_db)}


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def dequantized_names(quantized: onnx.ModelProto) -> dict[str, str]:
    """Float tensor -> the output of the DequantizeLinear that carries its int8 version."""
    index = NodeIndex(quantized.graph)
    out = {}
    for node in index.nodes:
        if node.op_type == "QuantizeLinear":
            dq = [index.nodes[k] for k in index.readers.get(node.output[0], [])
                  if index.nodes[k].op_type == "DequantizeLinear"]
            if dq:
                out[node.input[0]] = dq[0].output[0]
    return out


def tensor_errors(reference: onnx.ModelProto, quantized: onnx.ModelProto, tensors: list[str],
                  samples: Iterable[dict[str, np.ndarray]], max_samples: int | None = None,
                  progress: Callable[[int, int | None], None] | None = None) -> list[TensorError]:
    """SQNR of each of ``tensors`` (float names of the reference), worst own SQNR first.

    A quantized tensor is read after its DequantizeLinear, so its own rounding counts. Fetching
    intermediate tensors keeps onnxruntime from fusing some Q/DQ pairs, so the quantized side
    runs partly in fake-quantized float: the same values up to accumulation order.
    """
    names = sorted(set(tensors))
    dq = dequantized_names(quantized)
    ref_session = make_session(lambda: augmented_bytes(reference, names), weights=reference)
    q_session = make_session(lambda: augmented_bytes(quantized, [dq.get(n, n) for n in names]), weights=quantized)
    available = {o.name for o in q_session.get_outputs()}
    names = [n for n in names if n in {o.name for o in ref_session.get_outputs()} and dq.get(n, n) in available]
    fetch = [dq.get(n, n) for n in names]
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    specs = input_specs(reference)
    total = getattr(samples, "length", None)
    if total is not None and max_samples is not None:
        total = min(total, max_samples)
    for index, raw in enumerate(samples):
        if max_samples is not None and index >= max_samples:
            break
        feed = check_feed(raw, specs, index)
        for name, r, q in zip(names, ref_session.run(names, feed), q_session.run(fetch, feed)):
            if r.dtype.kind != "f" or r.shape != q.shape:
                continue
            r64, d = r.astype(np.float64), r.astype(np.float64) - q.astype(np.float64)
            signal[name] += float(np.vdot(r64, r64))
            noise[name] += float(np.vdot(d, d))
        if progress is not None:
            progress(index + 1, total)
    sqnr = {n: _db(signal[n], noise[n]) for n in names}
    relative = {n: noise[n] / signal[n] if signal[n] > 0 else (0.0 if noise[n] == 0 else math.inf) for n in names}
    producer = {o: node for node in reference.graph.node for o in node.output}
    out = []
    for name in names:
        node = producer.get(name)
        inputs = [relative[i] for i in (node.input if node is not None else []) if i in relative]
        added = max(relative[name] - min(inputs, default=0.0), 0.0)
        own = math.inf if added == 0 else -10 * math.log10(added)
        out.append(TensorError(name, node.name if node is not None else "", node.op_type if node is not None else "input",
                               sqnr[name], own))
    out.sort(key=lambda e: (e.own_sqnr_db, e.tensor))
    return out
