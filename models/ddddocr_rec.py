"""ddddocr's text recogniser (CNN + bidirectional LSTM + CTC, 8,210 classes), as shipped in ``ddddocr``.

``common.onnx`` is the fp32 model (54 MB, a third of it the LSTM); the package's default
``common_old.onnx`` is already dynamically quantized by onnxruntime. Input: a grayscale text
image resized to height 64, ``pixel / 255``, shape (1, 1, 64, W); output: per-column class
scores, greedy CTC (blank 0).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from models import packaged

INPUT_NAME = "input1"
HEIGHT = 64


def package_dir() -> Path:
    return packaged.package_dir("ddddocr", "ddddocr")  # located, not imported (its import pulls OpenCV)


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_dir() / "common.onnx", out_path)
    return out_path


def ctc_greedy(scores) -> tuple[int, ...]:
    """Class indices of a greedy CTC decode of one output (T, 1, C) or (1, T, C)."""
    import numpy as np

    scores = np.asarray(scores)
    best = scores[:, 0, :].argmax(-1) if scores.shape[1] == 1 else scores[0].argmax(-1)
    out, prev = [], -1
    for idx in best.tolist():
        if idx != prev and idx != 0:
            out.append(idx)
        prev = idx
    return tuple(out)
