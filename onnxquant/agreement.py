"""How closely a compressed model's outputs follow the original's, accumulated sample by sample.

Memory stays constant in the number of samples: each output keeps a few running sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class OutputAgreement:
    """Running agreement for one output tensor."""

    name: str
    samples: int = 0
    signal: float = 0.0  # sum of reference^2
    noise: float = 0.0  # sum of (reference - compressed)^2
    cosines: list[float] = field(default_factory=list)  # one float per sample: tiny
    max_abs_error: float = 0.0
    top1_hits: int = 0
    top1_rows: int = 0
    exact: int = 0  # non-float outputs: samples that match exactly
    is_float: bool = True

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        reference, compressed = np.asarray(reference), np.asarray(compressed)
        self.samples += 1
        if reference.shape != compressed.shape:
            self.is_float = reference.dtype.kind == "f"
            self.cosines.append(0.0)
            self.max_abs_error = math.inf
            return
        if reference.dtype.kind != "f":
            self.is_float = False
            self.exact += int(np.array_equal(reference, compressed))
            return
        r = reference.astype(np.float64).ravel()
        c = compressed.astype(np.float64).ravel()
        diff = r - c
        self.signal += float(r @ r)
        self.noise += float(diff @ diff)
        self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max(initial=0.0)))
        norm = float(np.linalg.norm(r) * np.linalg.norm(c))
        # Two all-zero outputs agree perfectly; one zero against non-zero does not.
        self.cosines.append(float(r @ c) / norm if norm > 0 else float(np.array_equal(r, c)))
        if reference.ndim == 2 and reference.shape[1] > 1:  # (batch, classes): a classifier's scores
            self.top1_hits += int((reference.argmax(1) == compressed.argmax(1)).sum())
            self.top1_rows += reference.shape[0]

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    def to_dict(self) -> dict[str, Any]:
        if not self.is_float:
            return {"samples": self.samples, "exact_match": self.exact / max(self.samples, 1)}
        out: dict[str, Any] = {
            "samples": self.samples,
            "cosine": float(np.mean(self.cosines)) if self.cosines else None,
            "cosine_min": float(np.min(self.cosines)) if self.cosines else None,
            "sqnr_db": _finite(self.sqnr_db),
            "max_abs_error": _finite(self.max_abs_error),
        }
        if self.top1_rows:
            out["top1"] = self.top1_hits / self.top1_rows
        return out


def _finite(value: float) -> float | str:
    """JSON has no infinity: say it in words."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, 6)
