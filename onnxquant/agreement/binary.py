"""Yes/no probabilities: one sigmoid output per sample, decided at 0.5.

An end-of-turn, wake-word or voice-activity model's user acts on the decision, not on the
number: an SQNR of 15 dB over 32 samples passed smart-turn with 2 decisions flipped and a
probability moved by 0.54 (benchmarks/unseen_hunt/RESULTS.md, round 4). So the figures are the
share of decisions (value >= 0.5) that fp32 and int8 agree on, the largest probability change
and the mean one (which tells apart two trials that flip the same decisions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

THRESHOLD = 0.5


@dataclass
class BinaryAgreement:
    """Running decision agreement and probability changes of int8 against fp32."""

    decisions: int = 0
    same: int = 0
    max_change: float = 0.0
    total_change: float = 0.0

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        ref = reference.astype(np.float64).ravel()
        comp = compressed.astype(np.float64).ravel()
        # a NaN or infinite value decides nothing: it never agrees (nan >= 0.5 is False, which would
        # agree with every "no") and its change is infinite, so the budget and the search both see it
        finite = np.isfinite(ref) & np.isfinite(comp)
        change = np.where(finite, np.abs(ref - comp), np.inf)
        self.decisions += ref.size
        self.same += int(np.sum(((ref >= THRESHOLD) == (comp >= THRESHOLD)) & finite))
        if change.size:
            self.max_change = max(self.max_change, float(change.max()))
            self.total_change += float(change.sum())

    def closeness(self, max_change: float) -> float:
        """The search's tie-break between trials that flip the same decisions, in place of a cosine
        (1 at no change; a cosine pooled over one value a sample ignores scale: halving every
        probability keeps it at 1): 1 minus the mean probability change, and 1 less again when the
        largest change exceeds ``max_change`` (the default budget), so such a trial ranks below
        every one that meets it. A NaN or infinite output gives -2, the floor (finite: trial tables are JSON)."""
        if not self.decisions:
            return 1.0
        mean = self.total_change / self.decisions
        value = 1.0 - mean - (0.0 if self.max_change <= max_change else 1.0)
        return max(value, -2.0) if math.isfinite(value) else -2.0

    def metrics(self) -> dict[str, float | int]:
        if not self.decisions:
            return {}
        return {"decision_agreement": self.same / self.decisions, "decisions": self.decisions,
                "max_probability_change": self.max_change,
                "mean_probability_change": self.total_change / self.decisions}
