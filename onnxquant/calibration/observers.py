"""Per-tensor statistics and the range estimators (minmax, percentile, entropy, mse).

``TensorStats`` is the streaming state; the estimators are pure functions of it, so stats saved
once can be re-used with any method without running the model again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxquant.calibration.histogram import StreamingHistogram, strided_sample

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")


# Values at or below this are mask sentinels (attention masks built from finfo.min or -1e9),
# not magnitudes: a range stretched to them leaves every real value in one quantization step.
MASK_SENTINEL = -1e9
# A masked tensor's range reaches at least this far below its maximum, so masked positions,
# saturated to the range's floor, still weigh exp(-16) ~ 1e-7 in a following Softmax.
MASK_GAP = 16.0


@dataclass
class TensorStats:
    """Exact min/max plus, when a histogram method may be used, a streaming histogram.

    Mask sentinels are counted in ``masked`` and kept out of the range and histogram.
    """

    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    histogram: StreamingHistogram | None = None
    masked: int = 0

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if np.isnan(lo) or np.isnan(hi) or hi == np.inf:
            raise FloatingPointError("tensor contains NaN or Inf")
        if lo <= MASK_SENTINEL:
            keep = values > MASK_SENTINEL
            self.masked += int(values.size - np.count_nonzero(keep))
            values = values[keep]
            if values.size == 0:
                return
            lo = float(values.min())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += values.size
        if self.histogram is not None:
            self.histogram.add(strided_sample(values.reshape(-1)), lo, hi)


def _minmax(stats: TensorStats, **_: float) -> tuple[float, float]:
    return stats.min, stats.max


def _centers_counts(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    hist = stats.histogram
    if hist is None or hist.empty:
        raise ValueError("this method needs a histogram; collect statistics with histograms")
    centers = hist.origin + hist.width * (np.arange(hist.bins) + 0.5)
    return centers, hist.counts.astype(np.float64)


def _percentile(stats: TensorStats, percentile: float = 99.999, **_: float) -> tuple[float, float]:
    centers, counts = _centers_counts(stats)
    cdf = np.cumsum(counts) / counts.sum()
    tail = (100.0 - percentile) / 100.0
    lo = centers[min(np.searchsorted(cdf, tail, side="left"), len(centers) - 1)]
    hi = centers[min(np.searchsorted(cdf, 1.0 - tail, side="left"), len(centers) - 1)]
    # Never widen past the exact extremes; never clip a one-sided (e.g. ReLU) tensor's zero side.
    lo = stats.min if stats.min >= 0 else max(stats.min, lo)
    return lo, min(stats.max, hi)


def _candidate_ranges(stats: TensorStats, steps: int) -> np.ndarray:
    """Shrunk versions of [min, max] (always containing 0), as an array of (lo, hi)."""
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    factors = np.linspace(1.0 / steps, 1.0, steps)
    return np.stack([lo * factors, hi * factors], axis=1)


def _mse(stats: TensorStats, levels: float = 255.0, steps: int = 100, **_: float) -> tuple[float, float]:
    """The clipping range minimising expected squared error: clipping error plus rounding noise."""
    centers, counts = _centers_counts(stats)
    cand = _candidate_ranges(stats, steps)
    lo, hi = cand[:, :1], cand[:, 1:]
    step = np.maximum(hi - lo, 1e-30) / levels
    clipped = np.clip(centers[None, :], lo, hi)
    err = (centers[None, :] - clipped) ** 2 + step**2 / 12.0
    best = int(np.argmin(err @ counts))
    return float(cand[best, 0]), float(cand[best, 1])


def _entropy(stats: TensorStats, levels: float = 255.0, steps: int = 128, **_: float) -> tuple[float, float]:
    """KL-divergence calibration (TensorRT style) over candidate clipping ranges."""
    centers, counts = _centers_counts(stats)
    nlevels = int(levels)
    if stats.count < 16 * nlevels:
        return stats.min, stats.max  # too few values for a meaningful divergence
    if stats.min >= 0:
        # One-sided (ReLU-like) tensors: the spike of exact zeros says nothing about where to
        # clip the positive tail, and would otherwise dominate the divergence.
        counts = counts.copy()
        counts[np.argmin(np.abs(centers - 0.0))] = 0.0
    total = counts.sum()
    best, best_kl = (stats.min, stats.max), np.inf
    if total == 0:
        return best
    for lo, hi in _candidate_ranges(stats, steps):
        inside = (centers >= lo) & (centers <= hi)
        if inside.sum() < nlevels:
            continue  # finer than the quantization grid: no information lost by rounding
        p = np.where(inside, counts, 0.0)
        idx = np.flatnonzero(inside)
        p[idx[0]] += counts[centers < lo].sum()
        p[idx[-1]] += counts[centers > hi].sum()
        # q: the in-range counts *without* the clipped outliers, merged into `levels` groups and
        # spread back over the non-empty bins; p keeps the outliers in its edge bins, so
        # clipping too much shows up as divergence (TensorRT's formulation).
        group = ((centers[idx] - lo) / max(hi - lo, 1e-30) * nlevels).astype(np.int64).clip(0, nlevels - 1)
        pin, raw = p[idx], counts[idx]
        sums = np.bincount(group, weights=raw, minlength=nlevels)
        nonzero = np.bincount(group, weights=(raw > 0).astype(np.float64), minlength=nlevels)
        q = np.where(raw > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0)
        pn, qn = pin / total, q / max(q.sum(), 1e-30) * (pin.sum() / total)
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-30))))
        if kl < best_kl:
            best, best_kl = (float(lo), float(hi)), kl
    return best


ESTIMATORS: dict[str, Callable[..., tuple[float, float]]] = {
    "minmax": _minmax,
    "percentile": _percentile,
    "entropy": _entropy,
    "mse": _mse,
}


def needs_histogram(method: str) -> bool:
    return method != "minmax"


def estimate_range(stats: TensorStats, method: str, **options: float) -> tuple[float, float]:
    """The activation range ``method`` picks from ``stats``."""
    if stats.count == 0:
        return (-MASK_GAP, 0.0) if stats.masked else (0.0, 0.0)
    lo, hi = ESTIMATORS[method](stats, **options)
    if stats.masked:
        lo = min(lo, hi - MASK_GAP)
    return lo, hi


@dataclass
class StatsTable:
    """Statistics for every observed tensor, keyed by tensor name."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0
    model_digest: str = ""
