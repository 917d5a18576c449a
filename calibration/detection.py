"""Samples for the zoo's detectors whose ONNX ends at raw heads (ddddocr's character detector).

Photos from scikit-image/scikit-learn with lines of rendered text on them (``text_images``, the
same pictures PP-OCR's detector calibrates on): calibration and held-out sets come from
different photos and different lines.
"""
from __future__ import annotations

import numpy as np


def ddddocr_det_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    from calibration.sets import text_images
    from models import ddddocr_det as m

    count = count or (32 if part == "calib" else 16)
    return [{m.INPUT_NAME: m.preprocess(img)} for img in text_images(part, count)]
