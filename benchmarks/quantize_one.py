"""Quantize one model with one tool in this process; print time and peak memory as JSON.

Run as a subprocess by ``benchmarks/run.py`` so each tool's peak RSS is its own.
``python -m benchmarks.quantize_one TOOL MODEL CALIB_DIR OUT``
"""
from __future__ import annotations

import glob
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


class NpzReader:
    """onnxruntime CalibrationDataReader over a folder of .npz samples."""

    def __init__(self, folder: str) -> None:
        self.files = sorted(glob.glob(f"{folder}/*.npz"))
        self.index = 0

    def get_next(self):
        if self.index >= len(self.files):
            return None
        self.index += 1
        with np.load(self.files[self.index - 1]) as data:
            return {k: data[k] for k in data.files}


def peak_rss_mb() -> float:
    """This process's own peak RSS. ``VmHWM`` resets at exec; ``ru_maxrss`` would include the
    parent's size at fork, which makes every child look as large as the benchmark driver."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_onnxquant(model: str, calib: str, out: str, method: str = "minmax", search: bool = True) -> dict:
    import onnxquant

    recipe = onnxquant.Recipe().with_overrides(calibration={"method": method}, search={"enabled": search})
    result = onnxquant.quantize(model, calib, recipe, output=out)
    info = {"calibration_seconds": result.seconds["calibration"], "samples": result.samples,
            "library_seconds": result.seconds["total"], "stages": result.stages}
    if result.search is not None and result.search.get("skipped") is None:
        info["search"] = {"chosen": result.search["chosen"], "trials": len(result.search["trials"]),
                          "trial_seconds": [round(t["seconds"], 2) for t in result.search["trials"]]}
    return info


def run_ort_dynamic(model: str, calib: str, out: str) -> dict:
    """onnxruntime's dynamic quantization (int8 weights, activations quantized per call): no
    calibration data; it wins on several models."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True)
    return {}


def run_ort(model: str, calib: str, out: str, preprocess: bool, method: str = "MinMax") -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    source = model
    with tempfile.TemporaryDirectory() as tmp:
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = str(Path(tmp) / "pre.onnx")
            try:
                quant_pre_process(model, source)
            except Exception:  # its symbolic shape inference fails on many exports; users retry so
                quant_pre_process(model, source, skip_symbolic_shape=True)
        quantize_static(source, out, NpzReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        calibrate_method=CalibrationMethod[method])
    return {}


def run_nncf(model: str, calib: str, out: str) -> dict:
    """NNCF's ONNX backend with its defaults (mixed preset, fast bias correction on)."""
    import nncf
    import onnx

    files = sorted(glob.glob(f"{calib}/*.npz"))

    def load(path: str) -> dict:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    quantized = nncf.quantize(onnx.load(model), nncf.Dataset(files, load), subset_size=len(files))
    onnx.save(quantized, out)
    return {}


TOOLS = {
    "onnxquant": run_onnxquant,
    "onnxquant-as-given": lambda m, c, o: run_onnxquant(m, c, o, search=False),  # the recipe search off
    "ort-dynamic": run_ort_dynamic,
    "nncf": run_nncf,
    "ort": lambda m, c, o: run_ort(m, c, o, preprocess=False),
    "ort+pre": lambda m, c, o: run_ort(m, c, o, preprocess=True),
    # Histogram calibration, for the memory benchmark (benchmarks/memory.py).
    "onnxquant-entropy": lambda m, c, o: run_onnxquant(m, c, o, method="entropy"),
    "ort-entropy": lambda m, c, o: run_ort(m, c, o, preprocess=False, method="Entropy"),
}


def report(tool: str, quantize: Callable[[], dict]) -> None:
    """Run one quantization and print the protocol's one JSON line: ok, seconds, peak_rss_mb,
    the tool's own extra fields, or the failure's first line as ``error``. The per-tool scripts
    that run in their own virtual environments (benchmarks/quantize_aimet.py, ...) print theirs
    through this too."""
    started = time.perf_counter()
    info: dict = {"tool": tool}
    try:
        info.update(quantize())
        info["ok"] = True
    except Exception as exc:  # an anchor that fails is reported, not fatal
        info["ok"] = False
        info["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    info["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # all threads, imports included: steadier than wall on a busy machine
    info["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(info))


def main() -> None:
    tool, model, calib, out = sys.argv[1:5]
    report(tool, lambda: TOOLS[tool](model, calib, out))


if __name__ == "__main__":
    main()
