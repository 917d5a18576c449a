"""Float-tensor agreement, streamed: cosine, SQNR, max error, and the same per channel.

An output of one value a sample (a quality score, a probability of one event) has no per-sample
cosine worth reading: the cosine of two single numbers is 1 whenever their signs agree. Its
cosine is taken over the samples instead, as one vector of every sample's value.

A tensor that joins quantities of different scale (box coordinates 0..320 next to class scores
0..1) can look healthy as a whole while one slice has collapsed: the per-channel figures along
its feature axis show the worst slice. Memory is a few sums per output (and per channel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Per-channel figures are kept for at most this many channels: past it the axis is not a
# feature axis (a spatial or token axis) and each channel holds too few values to judge.
MAX_CHANNELS = 1024
# A channel whose reference RMS is below this holds no signal to compare against.
SILENT_RMS = 1e-6


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); inf when there is no noise."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(reference: np.ndarray, compressed: np.ndarray) -> float:
    """Cosine of two flattened arrays; two all-zero arrays agree, zero against non-zero does not."""
    r, c = reference.ravel(), compressed.ravel()
    norm = float(np.linalg.norm(r) * np.linalg.norm(c))
    return float(r @ c) / norm if norm > 0 else float(np.array_equal(r, c))


def feature_axis(shape: tuple[int, ...]) -> int | None:
    """The axis whose entries are different quantities (channels, features, box/score columns).

    (batch, features) -> 1; (batch, a, b) -> the shorter of a and b (YOLO outputs are laid out
    either way); (N, C, H, W...) -> 1. None when there is no such axis.
    """
    if len(shape) < 2:
        return None
    if len(shape) == 3:
        sizes = {a: shape[a] for a in (1, 2) if shape[a] > 1}
        if not sizes:
            return None
        axis = min(sizes, key=lambda a: (sizes[a], a))
    else:
        axis = 1
    return axis if 1 < shape[axis] <= MAX_CHANNELS else None


@dataclass
class SampleFigures:
    """What one sample adds to a ``TensorAgreement``: its sums, worst error and cosine, and,
    asked for by axis, its per-channel sums."""

    finite: bool
    signal: float = 0.0
    noise: float = 0.0
    max_abs_error: float = 0.0
    cosine: float = 0.0
    cross: float = 0.0  # sum r * c and sum c^2 (an output of one value a sample: cosine over the samples)
    compressed: float = 0.0
    _channels: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, reference: np.ndarray, compressed: np.ndarray, axis: int | None = None) -> SampleFigures:
        """``axis``: the per-channel sums along it too (computed here from the same float64 copies)."""
        r = reference.astype(np.float64)
        c = compressed.astype(np.float64)
        if not np.isfinite(c).all():
            return cls(finite=False)
        diff = r - c
        figures = cls(True, float(np.vdot(r, r)), float(np.vdot(diff, diff)), float(np.abs(diff).max(initial=0.0)),
                      cosine(r, c), float(np.vdot(r, c)), float(np.vdot(c, c)))
        if axis is not None:
            figures._sum_channels(r, c, diff, axis)
        return figures

    def channel_sums(self, reference: np.ndarray, compressed: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
        """Per channel along ``axis``: sum r^2, c^2, r*c, (r-c)^2, r and c."""
        if axis not in self._channels:
            r = reference.astype(np.float64)
            c = compressed.astype(np.float64)
            self._sum_channels(r, c, r - c, axis)
        return self._channels[axis]

    def _sum_channels(self, r: np.ndarray, c: np.ndarray, diff: np.ndarray, axis: int) -> None:
        others = tuple(a for a in range(r.ndim) if a != axis)
        self._channels[axis] = ((r * r).sum(axis=others), (c * c).sum(axis=others), (r * c).sum(axis=others),
                                (diff * diff).sum(axis=others), r.sum(axis=others), c.sum(axis=others))


class SampleMemo:
    """Figures of (reference, compressed) pairs already computed, by the arrays' identity, for
    scorings of subsets of one set of outputs. It holds the arrays, so an identity is never
    reused while it lives; it lives as long as one such scoring."""

    def __init__(self) -> None:
        self._by_pair: dict[tuple[int, int], tuple[Any, Any, SampleFigures]] = {}

    def figures(self, reference: np.ndarray, compressed: np.ndarray, axis: int | None = None) -> SampleFigures:
        key = (id(reference), id(compressed))
        if key not in self._by_pair:
            self._by_pair[key] = (reference, compressed, SampleFigures.of(reference, compressed, axis))
        return self._by_pair[key][2]


@dataclass
class TensorAgreement:
    """Running cosine/SQNR/max-error of one float output, whole and per channel."""

    per_channel: bool = True
    signal: float = 0.0  # sum of reference^2
    noise: float = 0.0  # sum of (reference - compressed)^2
    cosines: list[float] = field(default_factory=list)  # one per sample: tiny
    max_abs_error: float = 0.0
    nonfinite: int = 0  # samples whose compressed output holds NaN or Inf
    single_values: bool = True  # every sample so far held one value: cosine over the samples
    _cross: float = 0.0  # sum reference * compressed, and sum compressed^2, over every sample
    _compressed: float = 0.0
    axis: int | None = None
    _rr: np.ndarray | None = None  # per channel: sum r^2, sum c^2, sum r*c, sum (r-c)^2
    _cc: np.ndarray | None = None
    _rc: np.ndarray | None = None
    _nn: np.ndarray | None = None
    _r: np.ndarray | None = None  # per channel: sum r, sum c (for the centred cosine)
    _c: np.ndarray | None = None
    _values: int = 0  # values summed into each channel

    def add(self, reference: np.ndarray, compressed: np.ndarray, memo: SampleMemo | None = None) -> None:
        """One sample. ``memo``: its figures kept from an earlier agreement over the same two
        arrays (a leave-one-out scoring adds each sample n - 1 times): the same numbers, summed
        in the same order, so the same bits, computed once."""
        axis = feature_axis(reference.shape) if self.per_channel else None
        figures = (memo.figures(reference, compressed, axis) if memo is not None
                   else SampleFigures.of(reference, compressed, axis))
        if not figures.finite:
            self.nonfinite += 1
            self.cosines.append(0.0)
            self.max_abs_error = math.inf
            self.noise = math.inf
            return
        self.signal += figures.signal
        self.noise += figures.noise
        self._cross += figures.cross
        self._compressed += figures.compressed
        self.single_values = self.single_values and reference.size == 1
        self.max_abs_error = max(self.max_abs_error, figures.max_abs_error)
        self.cosines.append(figures.cosine)
        if self.per_channel:
            self._add_channels(reference, compressed, figures)

    def _add_channels(self, reference: np.ndarray, compressed: np.ndarray, figures: SampleFigures) -> None:
        axis = feature_axis(reference.shape)
        if axis is None or (self.axis is not None and (axis != self.axis or reference.shape[axis] != len(self._rr))):
            self.per_channel = False  # shapes change between samples: no stable feature axis
            self._rr = self._cc = self._rc = self._nn = self._r = self._c = None
            return
        if self.axis is None:
            self.axis, n = axis, reference.shape[axis]
            self._rr, self._cc, self._rc, self._nn, self._r, self._c = (np.zeros(n) for _ in range(6))
        rr, cc, rc, nn, r, c = figures.channel_sums(reference, compressed, axis)
        self._rr += rr
        self._cc += cc
        self._rc += rc
        self._nn += nn
        self._r += r
        self._c += c
        self._values += reference.size // reference.shape[axis]

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    def cosine_mean_min(self) -> tuple[float, float]:
        """The mean and lowest cosine over samples; for single-value outputs, the one cosine of all
        samples' values (0 once any output was not finite). Call after at least one sample."""
        if not (self.single_values and self.cosines):
            return float(np.mean(self.cosines)), float(np.min(self.cosines))
        if self.nonfinite:
            return 0.0, 0.0
        norm = math.sqrt(self.signal * self._compressed)
        pooled = self._cross / norm if norm > 0 else float(self.noise == 0.0)
        return pooled, pooled

    def channels(self) -> dict[str, float | int] | None:
        """Worst channel's SQNR and centred cosine, over channels that vary; None without a feature axis.

        The cosine is taken after removing each channel's mean (a correlation): a slice that
        collapsed to a constant then scores 0, where a plain cosine of two positive vectors
        would still look high.
        """
        if not self.per_channel or self._rr is None or not self._values:
            return None
        n = float(self._values)
        var_r = self._rr - self._r ** 2 / n
        var_c = np.maximum(self._cc - self._c ** 2 / n, 0.0)
        cov = self._rc - self._r * self._c / n
        live = var_r > (SILENT_RMS ** 2) * n
        if not live.any():
            return None
        norm = np.sqrt(var_r[live] * var_c[live])
        cos = np.divide(cov[live], norm, out=np.zeros_like(norm), where=norm > 0)
        rr, nn = self._rr[live], self._nn[live]
        with np.errstate(divide="ignore"):
            sqnr = np.where(nn > 0, 10.0 * np.log10(rr / np.where(nn > 0, nn, 1.0)), np.inf)
        index = np.flatnonzero(live)
        worst_cos, worst_sqnr = int(np.argmin(cos)), int(np.argmin(sqnr))
        return {"channel_axis": int(self.axis), "channels": int(live.sum()),
                "constant_channels": int((~live).sum()),
                "channel_cosine_min": float(cos[worst_cos]), "channel_cosine_worst": int(index[worst_cos]),
                "channel_sqnr_db_min": float(sqnr[worst_sqnr]), "channel_sqnr_db_worst": int(index[worst_sqnr])}
