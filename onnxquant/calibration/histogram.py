"""A fixed-size histogram that streams: memory is constant, whatever the number of samples.

When a batch falls outside the current range, the range grows by an integer factor of the bin
width, so old bins merge exactly into new ones (no re-binning error accumulates).
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 2048
# Elements histogrammed per tensor per batch. min/max stay exact; the histogram's shape is
# estimated from an evenly strided sample, which keeps calibration time close to plain min-max.
SAMPLE_CAP = 1 << 16


def strided_sample(flat: np.ndarray, cap: int = SAMPLE_CAP) -> np.ndarray:
    if flat.size <= cap:
        return flat
    stride = flat.size // cap
    stride += 1 - stride % 2  # odd strides avoid aliasing with power-of-two channel layouts
    return flat[::stride]


class StreamingHistogram:
    """Counts over ``[origin, origin + width * bins)``; grows by merging bins."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.bins = bins
        self.origin = 0.0
        self.width = 0.0
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def empty(self) -> bool:
        return self.width == 0.0

    @property
    def edges(self) -> np.ndarray:
        return self.origin + self.width * np.arange(self.bins + 1, dtype=np.float64)

    def _start(self, lo: float, hi: float) -> None:
        span = hi - lo
        if span <= 1e-30:  # constant (or subnormal-wide) first batch: a width of 0 would divide by 0
            span = max(abs(lo), 1.0) * 1e-6
        self.origin = lo
        self.width = span / self.bins * (1 + 1e-9)

    def _grow(self, lo: float, hi: float) -> None:
        left = max(0, math.ceil((self.origin - lo) / self.width))
        end = self.origin + self.width * self.bins
        right = max(0, math.ceil((hi - end) / self.width) + 1) if hi >= end else 0
        factor = max(1, math.ceil((left + self.bins + right) / self.bins))
        if factor > self.bins:
            # The old range is narrower than one new bin: restart and keep its counts in the
            # bin that holds it (merging bin by bin would need factors beyond int64).
            total, center = int(self.counts.sum()), self.origin + self.width * self.bins / 2
            self.counts = np.zeros(self.bins, np.int64)
            self._start(min(lo, self.origin), max(hi, end))
            self.counts[min(self.bins - 1, max(0, int((center - self.origin) / self.width)))] = total
            return
        index = (np.arange(self.bins) + left) // factor
        self.counts = np.bincount(index, weights=self.counts, minlength=self.bins).astype(np.int64)
        self.origin -= left * self.width
        self.width *= factor

    def add(self, values: np.ndarray, lo: float, hi: float) -> None:
        """Add ``values`` (a 1-D sample) whose full tensor spans ``[lo, hi]``."""
        if self.empty:
            self._start(lo, hi)
        elif lo < self.origin or hi >= self.origin + self.width * self.bins:
            self._grow(lo, hi)
        index = ((values.astype(np.float64) - self.origin) / self.width).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def merge(self, other: StreamingHistogram) -> None:
        """Fold another histogram in (e.g. from another calibration worker or a saved file)."""
        if other.empty:
            return
        centers = other.origin + other.width * (np.arange(other.bins) + 0.5)
        lo, hi = float(other.origin), float(other.origin + other.width * other.bins)
        if self.empty:
            self._start(lo, hi)
        elif lo < self.origin or hi >= self.origin + self.width * self.bins:
            self._grow(lo, hi)
        index = np.clip(((centers - self.origin) / self.width).astype(np.int64), 0, self.bins - 1)
        self.counts += np.bincount(index, weights=other.counts, minlength=self.bins).astype(np.int64)
