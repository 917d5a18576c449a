"""Dense probability maps (a text detector's or a segmenter's per-pixel scores in [0, 1]): how much
of the region fp32 marks the compressed model still marks.

Post-processing thresholds such a map and keeps a region by its mean score (DB text detection,
rapidocr's defaults: threshold 0.3, box score 0.5, then grows each region by its area over its
perimeter). What it reads is the thresholded region, not the pixels: a map that is everywhere a
little less confident than fp32 loses whole regions and shrinks the others, cutting characters
off, while its cosine with fp32 stays high, and a faint halo that lowers the cosine costs nothing
(the region grows anyway). On PP-OCRv4's detector the recipe search, scoring by cosine, chose
percentile calibration (cosine 0.981 against 0.967 for entropy on its held-out samples), which
read 0.0029 more page characters wrong than fp32 where entropy read 0.0010 fewer
(benchmarks/page_cer.py). So a probability map is scored by the F2 score of fp32's region at the
usual thresholds (the worse one): recall weighs four times precision, as a lost region is lost
text and an extra margin is mostly grown over.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.5)  # DB text detection's default, and the usual one for masks
BETA = 2.0  # F-beta: recall counts beta^2 times as much as precision
MIN_SIDE = 8  # a map is at least this many pixels high and wide


def is_probability_map(value: object) -> bool:
    """A float (N, 1, H, W) tensor of values in [0, 1] with a spatial extent: one score per pixel
    (an image in [0, 1] has three channels; a score vector has no height and width)."""
    return (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim == 4 and value.size > 0
            and value.shape[1] == 1 and value.shape[2] >= MIN_SIDE and value.shape[3] >= MIN_SIDE
            and float(value.min()) >= 0.0 and float(value.max()) <= 1.0)


class MapAgreement:
    """Running pixel counts of fp32's region, the compressed model's, and both, per threshold."""

    def __init__(self) -> None:
        self.reference = np.zeros(len(THRESHOLDS))
        self.compressed = np.zeros(len(THRESHOLDS))
        self.both = np.zeros(len(THRESHOLDS))

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        for k, t in enumerate(THRESHOLDS):
            r, c = reference > t, compressed > t
            self.reference[k] += r.sum()
            self.compressed[k] += c.sum()
            self.both[k] += (r & c).sum()

    def metrics(self) -> dict[str, float]:
        """At the threshold where it is worst, ``map_f2`` (F-beta of fp32's region, beta 2),
        ``map_recall`` (the share of fp32's region kept), ``map_precision``, ``map_iou`` and
        ``map_area_ratio`` (compressed over fp32 region). Empty when fp32 marked no pixel at any
        threshold (nothing to keep: the cosine judges)."""
        live = self.reference > 0
        if not live.any():
            return {}
        recall = self.both / np.maximum(self.reference, 1)
        precision = np.where(self.compressed > 0, self.both / np.maximum(self.compressed, 1), 0.0)
        b2 = BETA * BETA
        denominator = b2 * precision + recall
        f = np.where(live & (denominator > 0), (1 + b2) * precision * recall / np.maximum(denominator, 1e-300),
                     np.where(live, 0.0, np.inf))
        k = int(np.argmin(f))
        union = self.reference[k] + self.compressed[k] - self.both[k]
        return {"map_f2": float(f[k]), "map_recall": float(recall[k]), "map_precision": float(precision[k]),
                "map_iou": float(self.both[k] / union), "map_area_ratio": float(self.compressed[k] / self.reference[k]),
                "map_threshold": THRESHOLDS[k]}
