"""Is a trial's gain over the best recipe so far real, or noise of the few held-out samples?

The search scores every trial on the same few held-out calibration samples (6 on PP-OCRv4's
detector) and keeps the best: with many trials, the best score is partly luck (the winner's
curse), and on PP-OCRv4's detector and Magika the choice it made that way was worse on other
data than the recipe as given. So a trial replaces the best only when its gain is clearly above
the noise of the difference, measured on the same samples (paired, so what all recipes share,
a hard sample, cancels):

- each trial's drop is computed again with each held-out sample left out (the jackknife), which
  works for any drop (a mean cosine, exp(-mean KL), the worst of several outputs, a user's
  ``--metric``) and gives one pseudo-value per sample;
- the standard error of the mean paired difference of two trials' pseudo-values is the noise;
- the gain must exceed ``t * noise``, Student's one-sided 97.5% quantile for n - 1 degrees of
  freedom (about 2 for many samples, 2.6 for 6).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxquant.mixed_precision import Holdout, Metric, score_outputs

# The normal quantile of the one-sided test (97.5%): a trial no better than the best passes it
# about once in 40 comparisons.
NORMAL_QUANTILE = 1.96


def pseudo_values(outputs: list[list[np.ndarray]], holdout: Holdout, drop: float,
                  metric: Metric | None = None) -> tuple[float, ...]:
    """Jackknife pseudo-values of the drop, one per held-out sample: n D - (n - 1) D(without i).
    Their mean estimates the drop and their spread its noise (for a mean of per-sample figures,
    such as a mean cosine, they are exactly the per-sample drops)."""
    n = len(outputs)
    if n < 2:
        return ()
    values = []
    for left_out in range(n):
        rest = [i for i in range(n) if i != left_out]
        values.append(n * drop - (n - 1) * score_outputs(outputs, holdout, metric, rest).drop)
    return tuple(float(v) for v in values)


def t_quantile(degrees: int, z: float = NORMAL_QUANTILE) -> float:
    """Student's t quantile for ``degrees`` of freedom at the normal quantile ``z`` (the
    Cornish-Fisher expansion; within 0.04 of the table from 4 degrees up): no scipy at run time."""
    d = float(max(degrees, 1))
    return (z + (z ** 3 + z) / (4 * d) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * d * d)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * d ** 3))


@dataclass(frozen=True)
class Comparison:
    """A trial against the best so far: its gain (the best's drop minus its own) and the margin
    the gain must exceed (t times the standard error of the paired difference)."""

    gain: float
    margin: float

    @property
    def clear(self) -> bool:
        return self.gain > self.margin


def compare(trial_drop: float, trial_pseudo: Sequence[float], best_drop: float,
            best_pseudo: Sequence[float]) -> Comparison:
    """The trial's gain over the best and the noise margin it must clear (0 without pseudo-values
    for both, on different samples: nothing to measure the noise by)."""
    gain = best_drop - trial_drop
    if len(trial_pseudo) != len(best_pseudo) or len(trial_pseudo) < 2:
        return Comparison(gain, 0.0)
    diff = np.asarray(best_pseudo, np.float64) - np.asarray(trial_pseudo, np.float64)
    error = float(np.std(diff, ddof=1)) / math.sqrt(len(diff))
    return Comparison(gain, t_quantile(len(diff) - 1) * error)
