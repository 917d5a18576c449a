"""Classifier scores: top-1 and top-5 agreement and KL divergence, rows of (batch, classes).

Scores may be logits or probabilities; KL is taken between the two softmax distributions
(probabilities are used as they are when each row already sums to 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def is_probability_rows(x: np.ndarray, axis: int = -1) -> bool:
    """Every value in [0, 1] and every row summing to 1 (a softmax or ZipMap output)."""
    if x.size == 0 or x.dtype.kind != "f":
        return False
    return bool(x.min() >= 0 and x.max() <= 1 + 1e-4 and np.allclose(x.sum(axis=axis), 1.0, atol=1e-3))


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of probabilities: as given when they already are, else a softmax of the logits."""
    x = scores.astype(np.float64)
    if is_probability_rows(x):
        return x / x.sum(axis=-1, keepdims=True)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def kl_divergence(reference: np.ndarray, compressed: np.ndarray) -> np.ndarray:
    """KL(reference || compressed) per row, in nats; probabilities clipped away from 0."""
    p, q = to_probabilities(reference), to_probabilities(compressed)
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    return (p * np.log(p / q)).sum(axis=-1)


def topk_agreement(reference: np.ndarray, compressed: np.ndarray, k: int) -> np.ndarray:
    """Per row: is the reference's top-1 class among the compressed model's top k?"""
    ref_top = reference.argmax(axis=-1)
    if k == 1:
        return compressed.argmax(axis=-1) == ref_top
    top = np.argpartition(-compressed, k - 1, axis=-1)[..., :k]
    return (top == ref_top[..., None]).any(axis=-1)


@dataclass
class ClassificationAgreement:
    """Running top-1/top-5 agreement and mean KL over rows (the last axis holds the classes)."""

    rows: int = 0
    top1_hits: int = 0
    top5_hits: int = 0
    kl_sum: float = 0.0
    classes: int = 0

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        classes = reference.shape[-1]
        r = reference.reshape(-1, classes).astype(np.float64)
        c = compressed.reshape(-1, classes).astype(np.float64)
        self.classes = classes
        self.rows += r.shape[0]
        self.top1_hits += int(topk_agreement(r, c, 1).sum())
        if classes > 5:
            self.top5_hits += int(topk_agreement(r, c, 5).sum())
        self.kl_sum += float(kl_divergence(r, c).sum())

    def metrics(self) -> dict[str, float]:
        if not self.rows:
            return {}
        out = {"top1": self.top1_hits / self.rows, "kl": self.kl_sum / self.rows}
        if self.classes > 5:
            out["top5"] = self.top5_hits / self.rows
        return out
