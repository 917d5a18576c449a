"""Save and load calibration statistics (``.npz``, no pickles) to re-quantize without inference."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from onnxquant.calibration.histogram import StreamingHistogram
from onnxquant.calibration.observers import StatsTable, TensorStats
from onnxquant.errors import CalibrationDataError
from onnxquant.model_io import write_atomic

FORMAT = "onnxquant-stats-1"


def save_stats(table: StatsTable, path: str | os.PathLike) -> Path:
    path = Path(path)
    names = sorted(table.tensors)
    stats = [table.tensors[n] for n in names]
    has_hist = bool(stats) and all(s.histogram is not None for s in stats)
    arrays = {
        "format": np.array(FORMAT),
        "digest": np.array(table.model_digest),
        "samples": np.array(table.samples, np.int64),
        "names": np.array(names, dtype=str),
        "min": np.array([s.min for s in stats], np.float64),
        "max": np.array([s.max for s in stats], np.float64),
        "count": np.array([s.count for s in stats], np.int64),
        "masked": np.array([s.masked for s in stats], np.int64),
    }
    if has_hist:
        arrays["hist_origin"] = np.array([s.histogram.origin for s in stats], np.float64)
        arrays["hist_width"] = np.array([s.histogram.width for s in stats], np.float64)
        arrays["hist_counts"] = np.stack([s.histogram.counts for s in stats])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_atomic(path, buffer.getvalue())


def load_stats(path: str | os.PathLike) -> StatsTable:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise CalibrationDataError(f"{path}: not an onnxquant statistics file")
            table = StatsTable(model_digest=str(data["digest"]), samples=int(data["samples"]))
            hist = "hist_counts" in data.files
            for i, name in enumerate(data["names"].tolist()):
                histogram = None
                if hist:
                    histogram = StreamingHistogram(bins=data["hist_counts"].shape[1])
                    histogram.origin = float(data["hist_origin"][i])
                    histogram.width = float(data["hist_width"][i])
                    histogram.counts = data["hist_counts"][i].astype(np.int64)
                masked = int(data["masked"][i]) if "masked" in data.files else 0
                table.tensors[name] = TensorStats(
                    float(data["min"][i]), float(data["max"][i]), int(data["count"][i]), histogram, masked
                )
    except CalibrationDataError:
        raise
    except Exception as exc:
        raise CalibrationDataError(f"{path}: cannot read statistics ({exc})") from exc
    return table
