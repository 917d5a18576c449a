"""Is a trial's gain over the best recipe so far real, or noise of the few held-out samples?

The search scores every trial on the same few held-out calibration samples (6 on PP-OCRv4's
detector) and keeps the best: with many trials, the best score is partly luck (the winner's
curse), and on PP-OCRv4's detector and Magika the choice it made that way was worse on other
data than the recipe as given. So a trial replaces the best only when the held-out samples agree
that it is better, paired sample by sample (what all recipes share, a hard sample, cancels):

- each trial's drop is computed again with each held-out sample left out (the jackknife), which
  works for any drop (a mean cosine, exp(-mean KL), the worst of several outputs, a user's
  ``--metric``) and gives one pseudo-value per sample: that sample's share of the drop;
- the paired differences of two trials' pseudo-values go through Wilcoxon's signed-rank test,
  one-sided at ``SIGNIFICANCE``. It uses ranks, not sizes: per-sample KL is heavy-tailed, and a
  recipe that cuts every sample's KL by two thirds (EfficientNet-Lite0's first layers float) is
  clearly better although one sample's large difference makes a standard error wide. With 6
  samples it needs all 6 better; with 17, about 13;
- an agreement drop of ``LARGE_DROP`` or more that a trial cuts by ``MOST_OF_THE_DROP``, better
  on most samples, is taken too: no near-tie (not for a ``--metric``, whose units are its own).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxquant.agreement.tensor import SampleMemo
from onnxquant.mixed_precision import Holdout, Metric, score_outputs

# The test's one-sided level: a trial no better than the best passes it about once in 40.
SIGNIFICANCE = 0.025
# A large agreement drop (a tenth of fp32's answer lost: F1, top-1, cosine, exp(-KL), 1 - CER)
# that a trial cuts by three quarters, on most held-out samples, is taken without the test: that
# is no near-tie for luck to decide, and with 6 held-out samples the test passes only when all 6
# are better (a detector's first layers float: F1 drop 0.5 -> 0, better on 5 of 6, p 0.2). A
# ``--metric`` has units of its own, so this does not apply to it.
LARGE_DROP = 0.1
MOST_OF_THE_DROP = 0.75
# The fewest paired samples on which the test can pass at all: every sample better gives p 2^-n
# (6 samples: 1/64). On 4 or 5 it could refuse every trial, however clear.
FEWEST_TESTABLE = next(n for n in range(1, 64) if 0.5**n < SIGNIFICANCE)


def pseudo_values(outputs: list[list[np.ndarray]], holdout: Holdout, drop: float,
                  metric: Metric | None = None, memo: SampleMemo | None = None) -> tuple[float, ...]:
    """Jackknife pseudo-values of the drop, one per held-out sample: n D - (n - 1) D(without i).
    Their mean estimates the drop and their spread its noise (for a mean of per-sample figures,
    such as a mean cosine, they are exactly the per-sample drops). ``memo``: per-sample tensor
    figures of ``outputs`` kept from scoring them whole; each of the n scorings adds n - 1
    samples, whose figures are computed once (PP-OCRv4 det's 960x960 maps: most of a trial's score)."""
    n = len(outputs)
    if n < 2:
        return ()
    memo = memo if memo is not None else SampleMemo()
    values = []
    for left_out in range(n):
        rest = [i for i in range(n) if i != left_out]
        values.append(n * drop - (n - 1) * score_outputs(outputs, holdout, metric, rest, memo).drop)
    return tuple(float(v) for v in values)


def signed_rank_p(differences: Sequence[float]) -> float:
    """One-sided p-value of Wilcoxon's signed-rank test that ``differences`` (paired, per sample)
    lean positive, exact for any count: the chance that signs flipped at random give a rank sum of
    the positive ones at least as large. Zero differences are dropped; tied sizes share ranks."""
    d = np.asarray([x for x in differences if x != 0.0], np.float64)
    if d.size == 0:
        return 1.0
    order = np.argsort(np.abs(d), kind="stable")
    sizes = np.abs(d)[order]
    ranks = np.empty(d.size)
    start = 0
    while start < d.size:  # midranks for tied sizes, doubled below to stay integers
        end = start
        while end + 1 < d.size and sizes[end + 1] == sizes[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    doubled = np.rint(2 * ranks).astype(np.int64)
    observed = int(doubled[d > 0].sum())
    chance = np.zeros(int(doubled.sum()) + 1)
    chance[0] = 1.0
    for r in doubled:  # the distribution of the positive rank sum under random signs
        chance = 0.5 * chance + 0.5 * np.concatenate([np.zeros(r), chance[:chance.size - r]])
    return float(chance[observed:].sum())


@dataclass(frozen=True)
class Comparison:
    """A trial against the best so far on the same held-out samples: its gain (the best's drop
    minus its own), on how many samples it did better, and the signed-rank p-value of that."""

    gain: float
    better: int
    samples: int
    p: float

    @property
    def clear(self) -> bool:
        return self.gain > 0 and self.p < SIGNIFICANCE

    def removes_most_of_a_large(self, best_drop: float) -> bool:
        """The best's agreement drop is large, the trial removes most of it, most samples agree."""
        return (best_drop >= LARGE_DROP and self.gain >= MOST_OF_THE_DROP * best_drop
                and 2 * self.better > self.samples)

    def __str__(self) -> str:
        return f"gain {self.gain:.3g}, better on {self.better} of {self.samples} held-out samples, p {self.p:.2g}"


def compare(trial_drop: float, trial_pseudo: Sequence[float], best_drop: float,
            best_pseudo: Sequence[float]) -> Comparison:
    """The trial's gain over the best and how clearly the held-out samples agree on it (p 1
    without pseudo-values for both on the same samples: nothing to measure the noise by)."""
    gain = best_drop - trial_drop
    if len(trial_pseudo) != len(best_pseudo) or len(trial_pseudo) < 2:
        return Comparison(gain, 0, len(trial_pseudo), 1.0)
    diff = np.asarray(best_pseudo, np.float64) - np.asarray(trial_pseudo, np.float64)
    return Comparison(gain, int((diff > 0).sum()), len(diff), signed_rank_p(diff))
