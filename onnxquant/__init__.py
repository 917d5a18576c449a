"""onnxquant: post-training int8 quantization for ONNX models, checked against onnxruntime."""
from __future__ import annotations

__version__ = "0.1.0"

from onnxquant.api import QuantizeResult, calibrate, quantize  # noqa: E402
from onnxquant.calibration.preprocess import ImagePreprocess  # noqa: E402
from onnxquant.errors import OnnxQuantError  # noqa: E402
from onnxquant.recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["ImagePreprocess", "OnnxQuantError", "QuantizeResult", "Recipe", "calibrate", "load_recipe", "quantize", "__version__"]
