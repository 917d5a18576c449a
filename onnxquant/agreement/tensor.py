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

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        r = reference.astype(np.float64)
        c = compressed.astype(np.float64)
        if not np.isfinite(c).all():
            self.nonfinite += 1
            self.cosines.append(0.0)
            self.max_abs_error = math.inf
            self.noise = math.inf
            return
        diff = r - c
        self.signal += float(np.vdot(r, r))
        self.noise += float(np.vdot(diff, diff))
        self._cross += float(np.vdot(r, c))
        self._compressed += float(np.vdot(c, c))
        self.single_values = self.single_values and r.size == 1
        self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max(initial=0.0)))
        self.cosines.append(cosine(r, c))
        if self.per_channel:
            self._add_channels(r, c, diff)

    def _add_channels(self, r: np.ndarray, c: np.ndarray, diff: np.ndarray) -> None:
        axis = feature_axis(r.shape)
        if axis is None or (self.axis is not None and (axis != self.axis or r.shape[axis] != len(self._rr))):
            self.per_channel = False  # shapes change between samples: no stable feature axis
            self._rr = self._cc = self._rc = self._nn = self._r = self._c = None
            return
        if self.axis is None:
            self.axis, n = axis, r.shape[axis]
            self._rr, self._cc, self._rc, self._nn, self._r, self._c = (np.zeros(n) for _ in range(6))
        others = tuple(a for a in range(r.ndim) if a != axis)
        self._rr += (r * r).sum(axis=others)
        self._cc += (c * c).sum(axis=others)
        self._rc += (r * c).sum(axis=others)
        self._nn += (diff * diff).sum(axis=others)
        self._r += r.sum(axis=others)
        self._c += c.sum(axis=others)
        self._values += r.size // r.shape[axis]

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
