"""Quantize one model with AMD Quark (ONNX); print time and peak memory as JSON.

Runs in Quark's own virtual environment (benchmarks/tool_venvs.py), which has Quark, onnx and
numpy but not onnxquant: ``build/venvs/quark/bin/python benchmarks/quantize_quark.py MODEL CALIB_DIR OUT``.
Only the sibling file quantize_one.py (numpy and the standard library) is imported from here.
"""
from __future__ import annotations

import sys
from importlib.metadata import version

import onnx

from quantize_one import NpzReader, report

# Quark's preset for int8 CNNs on CPU/GPU (its presets XINT8/VINT8 target AMD NPUs with
# power-of-two scales, A8W8 uses signed activations, which onnxruntime's CPU kernels run slower):
# QDQ, uint8 asymmetric activations and int8 symmetric weights, MinMax calibration, cross-layer
# equalisation on (Quark's default). Weights per channel, as for every other tool compared.
PRESET = "INT8_CNN_DEFAULT"
CONFIG = f"get_default_config('{PRESET}') (QDQ, U8 activations MinMax, S8 weights, CLE) + per_channel=True"


class RewindableNpzReader(NpzReader):
    """Quark may read the calibration set more than once (its algorithms re-run it)."""

    def rewind(self) -> None:
        self.index = 0


def quantize(model: str, calib: str, out: str) -> dict:
    from quark.onnx import Config, ModelQuantizer
    from quark.onnx.quantization.config.custom_config import get_default_config

    settings = get_default_config(PRESET)
    # Quark refuses per-channel QDQ below opset 13 ("requires onnx opset version 13 or above")
    # and does not convert the model itself: there it keeps its preset's per-tensor weights.
    opset = next((o.version for o in onnx.load(model, load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), 0)
    settings.per_channel = opset >= 13
    ModelQuantizer(Config(global_quant_config=settings)).quantize_model(model, out, RewindableNpzReader(calib))
    config = CONFIG if settings.per_channel else CONFIG.replace("per_channel=True", f"per-tensor (opset {opset} < 13)")
    return {"version": f"amd-quark {version('amd-quark')}, onnxruntime {version('onnxruntime')}", "config": config}


if __name__ == "__main__":
    model, calib, out = sys.argv[1:4]
    report("quark", lambda: quantize(model, calib, out))
