"""Magika's file-type classifier (standard_v3_3), as shipped in the ``magika`` wheel.

A JAX model exported through TensorFlow by tf2onnx: int32 byte tokens in, a one-hot MatMul as
embedding, a Conv over NHWC-transposed activations, LayerNorms written as Mul/Add chains, and a
Dense layer whose (1, N) bias sits in a following Add.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from models.packaged import package_dir

BEG, END, BLOCK, PADDING = 1024, 1024, 4096, 256  # from the model's config.min.json


def source_path() -> Path:
    # its folder only: importing magika starts its runtime
    return package_dir("magika", "magika") / "models" / "standard_v3_3" / "model.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
