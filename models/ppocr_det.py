"""PP-OCRv4 text detector (DBNet: Conv, ConvTranspose, Resize), as shipped in ``rapidocr-onnxruntime``.

Its weights are stored as ``Constant`` nodes rather than initializers, like many exported models;
onnxruntime's own quantizer fails on it ("Expected ... to be an initializer").
"""
from __future__ import annotations

import shutil
from pathlib import Path

# Pre-processing used by rapidocr: BGR/255 (OpenCV's order), then (x - 0.5) / 0.5, NCHW, sides multiple of 32.
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def source_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path
