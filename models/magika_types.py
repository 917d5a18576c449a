"""Magika's file-type classifier (standard_v3_3), as shipped in the ``magika`` wheel.

A JAX model exported through TensorFlow by tf2onnx: int32 byte tokens in, a one-hot MatMul as
embedding, a Conv over NHWC-transposed activations, LayerNorms written as Mul/Add chains, and a
Dense layer whose (1, N) bias sits in a following Add.
"""
from __future__ import annotations

import shutil
from pathlib import Path

BEG, END, BLOCK, PADDING = 1024, 1024, 4096, 256  # from the model's config.min.json


def source_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("magika")  # its folder only: importing magika starts its runtime
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("magika is not installed (pip install -e '.[models]')")
    return Path(spec.origin).parent / "models" / "standard_v3_3" / "model.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
