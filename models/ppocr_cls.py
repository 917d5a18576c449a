"""PP-OCR mobile v2 text-direction classifier (0 or 180 degrees), as shipped in ``rapidocr-onnxruntime``.

A Paddle export at opset 11 with ``Constant``-node weights, hard-swish written as Mul/Clip/Div
and squeeze-excitation blocks. The fp16 variant is the same model converted by
onnxconverter-common (fp16 inputs, weights and outputs).
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


def build_fp16(out_path: Path) -> Path:
    import warnings

    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source_path()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": tiny weights, expected
        half = float16.convert_float_to_float16(model, keep_io_types=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out_path))
    return out_path
