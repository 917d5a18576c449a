"""The benchmark's figures for MediaPipe's face models: BlazeFace's faces (MediaPipe's decoding,
then F1 against fp32's) and the face mesh's landmark error in pixels."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import face_boxes, landmarks


def _heads(logit: float, shift: float = 0.0) -> list[np.ndarray]:
    """One face on anchor 100 (stride 8, cell row 3, col 2: centre (20, 28) pixels), 32 x 32 pixels."""
    regressors = np.zeros((1, 896, 16), np.float32)
    classificators = np.full((1, 896, 1), -8.0, np.float32)
    regressors[0, 100, :4] = [shift, 0.0, 32.0, 32.0]
    classificators[0, 100, 0] = logit
    return [regressors, classificators]


def test_face_boxes_f1_at_mediapipes_threshold_and_overlap():
    same = face_boxes([_heads(4.0)], [_heads(4.0)])
    assert same["f1"] == 1.0 and same["matched_iou"] == pytest.approx(1.0) and same["detections_fp32"] == 1
    assert face_boxes([_heads(4.0)], [_heads(-1.0)])["f1"] == 0.0  # sigmoid(-1) is under MediaPipe's 0.5
    moved = face_boxes([_heads(4.0)], [_heads(4.0, shift=8.0)])  # IoU of a 32-pixel box moved 8: 0.6
    assert moved["f1"] == 1.0 and moved["matched_iou"] == pytest.approx(24 / 40)


def test_landmark_error_in_pixels():
    ref = [np.zeros((1, 1404, 1, 1), np.float32)]
    got = [np.full((1, 1404, 1, 1), 0.5, np.float32)]
    got[0][0, 7] = 3.0
    figures = landmarks(ref, got)
    assert figures["max_px_error"] == 3.0 and figures["mean_px_error"] == pytest.approx((1403 * 0.5 + 3.0) / 1404)
