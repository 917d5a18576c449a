"""PP-OCR mobile v2 text-direction classifier (0 or 180 degrees), as shipped in ``rapidocr-onnxruntime``.

A Paddle export at opset 11 with ``Constant``-node weights, hard-swish written as Mul/Clip/Div
and squeeze-excitation blocks.
"""
from __future__ import annotations

import shutil
from pathlib import Path

HEIGHT, WIDTH = 48, 192  # rapidocr's cls input: text-line crops resized to height 48, padded to 192


def source_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
