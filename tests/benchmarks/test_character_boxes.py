"""The benchmark's figure for ddddocr's detector: its own post-processing on both sides, then F1."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import character_boxes


def _output(score: float) -> np.ndarray:
    rows = np.tile(np.array([0.5, 0.5, -2.0, -2.0, 0.01, 0.01], np.float32), (3549, 1))
    rows[52 * 10 + 20] = [0.5, 0.5, np.log(3.0), np.log(2.0), score, 0.9]  # stride 8, cell (10, 20)
    return rows[None]


def test_character_boxes_f1_and_overlap():
    same = character_boxes([_output(0.9)], [_output(0.9)])
    assert same["f1"] == 1.0 and same["matched_iou"] == pytest.approx(1.0) and same["detections_fp32"] == 1
    assert character_boxes([_output(0.9)], [_output(0.05)])["f1"] == 0.0  # 0.05 x 0.9 is under the package's 0.1
