"""Run the float model on calibration samples and stream statistics of chosen tensors.

The model is augmented with the observed tensors as extra outputs; each sample's outputs are
folded into ``TensorStats`` and dropped before the next sample runs, so peak memory is one
sample's activations plus constant-size statistics.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import numpy as np
import onnx

from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.histogram import StreamingHistogram
from onnxquant.calibration.observers import StatsTable, TensorStats
from onnxquant.errors import CalibrationDataError, ModelError
from onnxquant.model_io import serialize, serialize_extended

ProgressCallback = Callable[[int, int | None], None]


def model_digest(model: onnx.ModelProto) -> str:
    """Digest of the graph's structure (ops and tensor names, not weights): what saved
    statistics must match to be reused."""
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update("|".join([node.op_type, *node.input, ">", *node.output]).encode())
    return h.hexdigest()


def augmented_bytes(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model with ``names`` as extra outputs, serialized without copying the weights."""
    existing = {o.name for o in model.graph.output}
    return serialize_extended(model, outputs=[n for n in names if n not in existing])


def make_session(model: onnx.ModelProto | bytes, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        data = model if isinstance(model, bytes) else serialize(model)
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {str(exc).strip().splitlines()[0]}") from exc


def collect(
    model: onnx.ModelProto,
    tensor_names: list[str],
    samples: Iterable[dict[str, np.ndarray]],
    histograms: bool,
    max_samples: int | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> StatsTable:
    """Observe ``tensor_names`` over ``samples``; non-float tensors are skipped."""
    names = sorted(set(tensor_names))
    session = make_session(augmented_bytes(model, names))
    fetch = [o.name for o in session.get_outputs()]
    wanted = set(names)
    specs = input_specs(model)
    table = StatsTable(model_digest=model_digest(model))
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    for index, raw in enumerate(samples):
        if max_samples is not None and index >= max_samples:
            break
        feed = check_feed(raw, specs, index)
        try:
            outputs = session.run(fetch, feed)
        except Exception as exc:
            raise CalibrationDataError(
                f"calibration sample {index}: onnxruntime failed: {str(exc).strip().splitlines()[0]}"
            ) from exc
        for name, value in zip(fetch, outputs):
            if name not in wanted or not isinstance(value, np.ndarray) or value.dtype != np.float32:
                continue
            stats = table.tensors.get(name)
            if stats is None:
                stats = table.tensors[name] = TensorStats(histogram=StreamingHistogram() if histograms else None)
            try:
                stats.update(value)
            except FloatingPointError as exc:
                raise CalibrationDataError(
                    f"calibration sample {index}: tensor {name!r} contains NaN or Inf"
                ) from exc
        del outputs
        table.samples += 1
        if progress:
            progress(table.samples, total)
    if table.samples == 0:
        raise CalibrationDataError("no calibration samples were read")
    return table
