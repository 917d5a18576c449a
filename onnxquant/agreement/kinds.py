"""What an output is, from its type, shape and first fp32 values (and overridable by the user).

The kind decides which agreement figures mean something for it and which default budgets
apply. The rules, in order:

- not a float tensor (integers, strings, a list of maps) -> ``labels``
- rank 3 whose rows along the last axis are probability (or log-probability) distributions
  over at least 3 symbols -> ``sequence`` (a CTC recogniser's per-step scores); raw logits too
  when they are not all in [0, 1] (a detector's sigmoid class scores are), at least 8 steps
  are read and the first or last symbol (a CTC blank) is the best one at 30% of them or more
  (hidden states have no such symbol); ``(time, 1, symbols)`` is read time-major
- rank 3 shaped like a YOLO head (one axis of 5..1000 columns, the other at least 3 times longer
  and at least 100), with class-score columns in [0, 1] and non-negative box sizes -> ``detection``
- rank 2 (batch, n >= 2): rows of probabilities -> ``classification``; rows of unit L2 norm, or
  a name that says embedding/feature/pool -> ``embedding``; otherwise -> ``classification`` (logits)
- one value per sample in [0, 1] made by a Sigmoid (``graph_hints``: the values alone cannot
  tell a probability from a regression value) -> ``binary``: judged by its decisions at 0.5
- anything else (dense maps, single values, hidden states) -> ``regression``

Boxes/scores pairs (``boxes (batch, n, 4)`` next to ``scores (batch, n, classes)`` or
``(batch, classes, n)`` with values in [0, 1]) are found across outputs by ``detection_pairs``:
both become ``detection``, decoded together and reported under the boxes output. Raw detection
heads (PicoDet/GFL per-level maps, YOLOX grids) are found the same way, with the image input's
size, by ``onnxquant.agreement.heads.find_raw_heads``. Outputs a Loop or Scan makes step by step
(``graph_hints``: an attention decoder's per-step token probabilities and cell boxes, SLANet's)
are not paired unless the user names either as a detection: their probabilities read as a sequence.
A pair refused only for that is said (``loop_refused_pairs``, a note in validate and quantize): a
Loop-based NMS hands out its kept boxes as loop-carried values, as SLANet its per-step ones.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from onnxquant.agreement.classification import is_probability_rows
from onnxquant.agreement.graph_hints import one_value_per_sample
from onnxquant.agreement.labels import is_map_rows

KINDS = ("classification", "embedding", "detection", "sequence", "regression", "binary", "labels")
_EMBEDDING_NAME = re.compile(r"embed|feature|pool|sentence|hidden|vector|encod", re.IGNORECASE)


def _is_log_probability_rows(x: np.ndarray) -> bool:
    if x.size == 0 or x.max() > 1e-4:
        return False
    return bool(np.allclose(np.exp(x.astype(np.float64)).sum(axis=-1), 1.0, atol=1e-3))


def _looks_like_yolo(x: np.ndarray) -> bool:
    short, long = sorted(x.shape[1:])
    if not (5 <= short <= 1000 and long >= 100 and long >= 3 * short):
        return False
    rows = np.swapaxes(x, 1, 2) if x.shape[1] < x.shape[2] else x
    scores, sizes = rows[..., 4:], rows[..., 2:4]
    return bool(scores.min() >= 0 and scores.max() <= 1 and sizes.min() >= 0 and rows[..., :4].max() > 1)


def _looks_like_ctc_logits(x: np.ndarray) -> bool:
    """Per-step scores where one edge symbol wins often: the blank of a CTC recogniser."""
    from onnxquant.agreement.sequence import batch_major

    if x.min() >= 0 and x.max() <= 1:
        return False  # sigmoid scores (a detector's per-anchor classes), not logits
    best = batch_major(x).reshape(-1, x.shape[-1]).argmax(axis=-1)
    if best.size < 8:
        return False
    share = max(np.mean(best == 0), np.mean(best == x.shape[-1] - 1))
    return bool(share >= 0.3)


def few_positive_scores(value: Any) -> bool:
    """A (batch, 2..4) float output with no negative value, read as logits: perhaps a few regression
    scores instead (DNSMOS's three opinion scores, 1 to 5), which the numbers alone cannot tell."""
    return (isinstance(value, np.ndarray) and value.ndim == 2 and 2 <= value.shape[1] <= 4 and value.size > 0
            and bool(value.min() >= 0) and not is_probability_rows(value))


def detect_kind(name: str, value: Any, hint: str | None = None) -> str:
    """The kind of output ``name`` judged from one fp32 value of it and what its producing nodes
    hint (``graph_hints``; see the module docstring)."""
    if hint == "binary" and one_value_per_sample(value):
        return "binary"
    if is_map_rows(value) or not isinstance(value, np.ndarray):
        return "labels"
    if value.dtype.kind != "f":
        return "labels"
    if value.ndim == 3 and value.shape[-1] >= 3 and value.size:
        if is_probability_rows(value) or _is_log_probability_rows(value):
            return "sequence"
        if _looks_like_yolo(value):
            return "detection"
        if _looks_like_ctc_logits(value):
            return "sequence"
    if value.ndim == 2 and value.shape[1] >= 2 and value.size:
        if is_probability_rows(value):  # a confident softmax row also has an L2 norm near 1
            return "classification"
        norms = np.linalg.norm(value.astype(np.float64), axis=1)
        if _EMBEDDING_NAME.search(name) or np.allclose(norms, 1.0, atol=1e-3):
            return "embedding"
        return "classification"
    return "regression"


def parse_kind_overrides(items: dict[str, str] | list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``NAME=KIND`` strings (or a name -> kind table) as a checked dict; ValueError names the problem."""
    if not items:
        return {}
    pairs: list[tuple[str, Any]]
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            name, sep, kind = str(item).rpartition("=")
            if not sep or not name:
                raise ValueError(f"output kind {item!r} is not NAME=KIND")
            pairs.append((name, kind))
    out = {}
    for name, kind in pairs:
        if kind not in KINDS:
            raise ValueError(f"output kind {kind!r} for {name!r} unknown; choose from {', '.join(KINDS)}")
        out[str(name)] = kind
    return out


def detection_pairs(values: dict[str, Any], kinds: dict[str, str] | None = None,
                    hints: dict[str, str] | None = None) -> dict[str, str]:
    """Boxes output name -> scores output name, for outputs that form a boxes/scores pair.

    Boxes: float (batch, n, 4) with n >= 2. Scores: another float rank-3 output with the same
    batch, n on axis 1 or 2, values in [0, 1]. An output the user gave another kind than
    detection is left out, and so is a pair with an output a Loop or Scan makes step by step
    (``hints``: a decoder's per-step outputs) unless the user said either is a detection (a
    Loop-based NMS hands out its kept boxes as loop-carried values: naming the boxes is enough).
    """
    kinds, hints = kinds or {}, hints or {}
    return _pairs(values, kinds, hints, steps_refuse=True)


def loop_refused_pairs(values: dict[str, Any], kinds: dict[str, str] | None = None,
                       hints: dict[str, str] | None = None) -> dict[str, str]:
    """Boxes -> scores pairs refused only because a Loop or Scan makes one of them: a decoder's
    per-step outputs, or a detector whose NMS is a Loop, which only the user can tell apart."""
    kinds, hints = kinds or {}, hints or {}
    found = _pairs(values, kinds, hints, steps_refuse=False)
    paired = detection_pairs(values, kinds, hints)
    taken = set(paired) | set(paired.values())
    return {b: s for b, s in found.items() if b not in taken and s not in taken}


def loop_pair_note(boxes: str, scores: str) -> str:
    """What the user reads about a pair ``loop_refused_pairs`` found, and the flags that pair it."""
    return (f"{boxes} and {scores} would pair as detections but come out of a Loop (or Scan), so they are "
            f"read on their own: --output-kind {boxes}=detection --output-kind {scores}=detection if this is a "
            f"detector")


def _pairs(values: dict[str, Any], kinds: dict[str, str], hints: dict[str, str], steps_refuse: bool) -> dict[str, str]:
    free = {k: v for k, v in values.items() if kinds.get(k, "detection") == "detection"
            and isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim == 3 and v.size}

    def allowed(a: str, b: str) -> bool:
        stepwise = hints.get(a) == "per_step" or hints.get(b) == "per_step"
        return not (steps_refuse and stepwise) or a in kinds or b in kinds

    pairs: dict[str, str] = {}
    taken: set[str] = set()
    for name, boxes in free.items():
        if boxes.shape[-1] != 4 or boxes.shape[1] < 2:
            continue
        for other, scores in free.items():
            if other == name or other in taken or other in pairs or scores.shape[0] != boxes.shape[0]:
                continue
            if boxes.shape[1] in scores.shape[1:] and scores.min() >= 0 and scores.max() <= 1 \
                    and allowed(name, other):
                pairs[name] = other
                taken.add(other)
                break
    return pairs
