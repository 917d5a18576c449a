"""Quantize one model with AIMET-ONNX; print time and peak memory as JSON.

Runs in AIMET's own virtual environment (benchmarks/tool_venvs.py), which has aimet-onnx, onnx
and numpy but not onnxquant: ``build/venvs/aimet/bin/python benchmarks/quantize_aimet.py MODEL CALIB_DIR OUT``.
Only the sibling file quantize_one.py (numpy and the standard library) is imported from here.
"""
from __future__ import annotations

import glob
import sys
from importlib.metadata import version

import numpy as np
import onnx

from quantize_one import report

# AIMET's post-training flow with its defaults: batch norms folded into the weights (AIMET warns
# that its simulation is inaccurate otherwise), QuantizationSimModel with int8 weights and
# activations, quant_scheme "min_max" and config "default" (default_config_per_channel.json:
# per-channel symmetric weights, asymmetric activations), compute_encodings over every
# calibration sample, then to_onnx_qdq() (uint8 activations), the QDQ model onnxruntime runs.
# prequantize_constants=True stores the weights as int8 before their DequantizeLinear (its default
# keeps them float32 before a QuantizeLinear: the same numbers, but an fp32-sized file).
CONFIG = ("fold_all_batch_norms_to_weight, QuantizationSimModel(param_type=int8, activation_type=int8, "
          "quant_scheme='min_max', config_file='default' (per-channel)), compute_encodings, "
          "to_onnx_qdq(prequantize_constants=True)")


def _samples(calib: str) -> list[dict[str, np.ndarray]]:
    out = []
    for path in sorted(glob.glob(f"{calib}/*.npz")):
        with np.load(path) as data:
            out.append({k: data[k] for k in data.files})
    return out


def quantize(model: str, calib: str, out: str) -> dict:
    from aimet_onnx import QuantizationSimModel
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

    proto = onnx.load(model)
    fold_all_batch_norms_to_weight(proto)
    sim = QuantizationSimModel(proto, param_type="int8", activation_type="int8", quant_scheme="min_max",
                               config_file="default")
    sim.compute_encodings(_samples(calib))
    onnx.save(sim.to_onnx_qdq(prequantize_constants=True), out)
    return {"version": f"aimet-onnx {version('aimet-onnx')}, onnxruntime {version('onnxruntime')}", "config": CONFIG}


if __name__ == "__main__":
    model, calib, out = sys.argv[1:4]
    report("aimet", lambda: quantize(model, calib, out))
