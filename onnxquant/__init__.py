"""onnxquant: post-training int8 quantization for ONNX models, checked against onnxruntime."""
from __future__ import annotations

from onnxquant.api import (
           PruneResult,
           QuantizeResult,
           calibrate,
           layer_errors,
           prune,
           quantize,
           sensitivity,
)
from onnxquant.calibration.preprocess import ImagePreprocess
from onnxquant.errors import OnnxQuantError
from onnxquant.pipeline.run_data import RunData
from onnxquant.recipe import PruneSettings, Recipe, load_recipe
from onnxquant.version import __version__

__all__ = ["ImagePreprocess", "OnnxQuantError", "PruneResult", "PruneSettings", "QuantizeResult", "Recipe", "RunData",
           "__version__", "calibrate", "layer_errors", "load_recipe", "prune", "quantize", "sensitivity"]
