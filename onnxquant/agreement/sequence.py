"""Sequences: greedy CTC decoding, exact-string agreement and character error rate.

A CTC recogniser (PP-OCR rec, speech models) outputs per time step a distribution over an
alphabet with one blank symbol: (batch, time, symbols), or time-major (time, batch, symbols) as
PyTorch's CTC layout and ddddocr write it; one batch-1 line (time, 1, symbols) is read
time-major. Greedy decoding takes the best symbol per step, merges repeats and drops blanks.
The fp32 model's strings are the truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def batch_major(scores: np.ndarray) -> np.ndarray:
    """(batch, time, symbols) scores; a (time, 1, symbols) tensor (one line, time-major) is
    transposed, since a batch of one-step lines is not what a recogniser outputs."""
    if scores.ndim == 3 and scores.shape[1] == 1 and scores.shape[0] > 1:
        return np.swapaxes(scores, 0, 1)
    return scores


def ctc_greedy(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Decoded symbol sequences of (batch, time, symbols) scores (probabilities, logits or log-probabilities)."""
    scores = batch_major(scores)
    best = scores.reshape(-1, *scores.shape[-2:]).argmax(axis=-1)
    decoded = []
    for row in best:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        decoded.append(tuple(int(s) for s in row[keep & (row != blank)]))
    return decoded


def edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def detect_blank(scores: np.ndarray) -> int:
    """The CTC blank of per-step scores: the first or the last symbol, whichever is the best one at
    more steps (PaddleOCR and ddddocr put it first, many PyTorch CRNNs last); the first on a tie,
    and for what has no steps of symbols (a scalar or a list forced to the kind: its samples are
    then told apart as mismatched)."""
    if not isinstance(scores, np.ndarray) or scores.ndim < 2 or scores.shape[-1] == 0 or scores.size == 0:
        return 0
    best = batch_major(scores).reshape(-1, scores.shape[-1]).argmax(axis=-1)
    last = scores.shape[-1] - 1
    return last if np.sum(best == last) > np.sum(best == 0) else 0


@dataclass
class SequenceAgreement:
    """Running exact-string agreement and character error rate of int8 strings against fp32."""

    blank: int = 0
    strings: int = 0
    exact: int = 0
    edits: int = 0
    reference_symbols: int = 0

    def add(self, reference: np.ndarray, compressed: np.ndarray) -> None:
        for ref, comp in zip(ctc_greedy(reference, self.blank), ctc_greedy(compressed, self.blank)):
            self.strings += 1
            self.exact += int(ref == comp)
            self.edits += edit_distance(ref, comp)
            self.reference_symbols += len(ref)

    def metrics(self) -> dict[str, float | int]:
        if not self.strings:
            return {}
        # CER: edits over the fp32 strings' length; when fp32 read nothing, any symbol is an error.
        cer = self.edits / self.reference_symbols if self.reference_symbols else float(self.edits > 0)
        return {"string_agreement": self.exact / self.strings, "cer": cer, "strings": self.strings,
                "blank": self.blank}
