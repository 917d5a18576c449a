"""The JSON report: every figure the HTML page shows, for scripts, from the pipeline's results.

Paths are reduced to file names so a report reads the same wherever it was made; measured
latencies and times are the only parts that differ between two runs on the same input.
"""
from __future__ import annotations

import platform
from typing import Any

import numpy as np
import onnx

from onnxquant.version import __version__
from onnxquant.inspect_model import ModelInspection
from onnxquant.report.histograms import activation_histograms, weight_histograms

REPORT_FORMAT = "onnxquant-report/1"


def tool_versions() -> dict[str, str]:
    """The versions that decide what a bundle contains and how it runs."""
    import onnxruntime

    return {"onnxquant": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _inspection(info: ModelInspection, name: str) -> dict[str, Any]:
    data = info.to_dict()
    data["path"] = name
    return data


def build_report(compressed: ModelInspection, compressed_model: onnx.ModelProto, name: str, *,
                 original: ModelInspection | None = None, quantization: dict[str, Any] | None = None,
                 validation: dict[str, Any] | None = None, layer_errors: list[dict[str, Any]] | None = None,
                 activations: list[dict[str, Any]] | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about one compressed model; the parts not measured are None."""
    stated = (recipe or (quantization or {}).get("recipe") or {}).get("quantization")
    # a model's recipe is its metadata, any JSON: a section that is not an object says nothing
    reduce_range = bool(stated.get("reduce_range", True)) if isinstance(stated, dict) else True
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": tool_versions(),
        "compressed": _inspection(compressed, name),
        "original": _inspection(original, original.path.rsplit("/", 1)[-1]) if original is not None else None,
        "quantization": _portable_quantization(quantization),
        "recipe": recipe if recipe is not None else (quantization or {}).get("recipe"),
        "validation": _portable_validation(validation),
        "layer_errors": layer_errors,
        "weight_histograms": [h.to_dict() for h in weight_histograms(compressed_model, reduce_range)],
        "activation_histograms": activations or [],
    }
    return report


def _portable_quantization(quantization: dict[str, Any] | None) -> dict[str, Any] | None:
    if quantization is None:
        return None
    out = dict(quantization)
    if out.get("output"):
        out["output"] = str(out["output"]).rsplit("/", 1)[-1]
    return out


def _portable_validation(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    if validation is None:
        return None
    out = dict(validation)
    for key in ("original", "compressed"):
        if isinstance(out.get(key), str):
            out[key] = out[key].replace("\\", "/").rsplit("/", 1)[-1]
    return out


def activation_report(stats: Any, quantized: onnx.ModelProto, reference: onnx.ModelProto) -> list[dict[str, Any]]:
    """Activation histograms of a ``quantize(..., diagnostics=True)`` result."""
    producers = {o: n.name for n in reference.graph.node for o in n.output}
    return [h.to_dict() for h in activation_histograms(stats, quantized, producers)]
