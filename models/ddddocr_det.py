"""ddddocr's character detector (YOLOX-nano style, 416 x 416), as shipped in ``ddddocr``.

``common_det.onnx`` ends at the raw heads: one output (1, 3549, 6), the three levels (strides 8,
16, 32: 52x52 + 26x26 + 13x13 cells) laid end to end, each row ``x, y`` offsets in grid cells,
``log w, log h`` in strides, the objectness and the one class score (both after a sigmoid).
The package decodes it in numpy (``DetectionEngine.demo_postprocess``: grid offsets times the
stride, ``exp`` of the sizes times the stride; score = objectness x class; class-agnostic NMS at
IoU 0.45, score above 0.1). Input: a BGR image letterboxed into 416 x 416 (top-left, padding
114), pixels 0..255 unscaled, NCHW.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from models.ddddocr_rec import package_dir

SIZE = 416
INPUT_NAME = "images"
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.1  # the package's
NMS_IOU = 0.45  # the package's


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_dir() / "common_det.onnx", out_path)
    return out_path


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """An RGB image (H x W x 3, uint8) as the network takes it: (1, 3, 416, 416), BGR, letterboxed."""
    h, w = rgb.shape[:2]
    r = min(SIZE / h, SIZE / w)
    resized = np.asarray(Image.fromarray(rgb).resize((int(w * r), int(h * r)), Image.Resampling.BILINEAR))
    padded = np.full((SIZE, SIZE, 3), 114, np.uint8)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    return np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)


def decode(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The package's post-processing of one image's output (3549, 6): boxes x1,y1,x2,y2 and scores
    after NMS, in input pixels (reimplemented from ``demo_postprocess`` and its class-agnostic NMS)."""
    grids, strides = [], []
    for stride in STRIDES:
        n = SIZE // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out = output.astype(np.float64)
    xy = (out[:, :2] + grid) * stride
    wh = np.exp(out[:, 2:4]) * stride
    scores = (out[:, 4:5] * out[:, 5:]).max(axis=1)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    keep = scores > SCORE_THRESHOLD
    boxes, scores = boxes[keep], scores[keep]
    order = scores.argsort()[::-1]
    picked = []
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = order[0]
        picked.append(i)
        lt = np.maximum(boxes[i, :2], boxes[order[1:], :2])
        rb = np.minimum(boxes[i, 2:], boxes[order[1:], 2:])
        inter = np.prod(np.maximum(0.0, rb - lt + 1), axis=1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= NMS_IOU]
    return boxes[picked], scores[picked]
