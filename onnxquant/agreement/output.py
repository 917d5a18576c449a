"""One output's agreement with fp32, by its kind, sample by sample; and its budget checks.

This is what "agrees with fp32" means everywhere: ``validate``, ``quantize --max-drop``,
sensitivity and pruning's search all read these figures.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnxquant.agreement.budgets import OUTPUT_BUDGETS, Budget, check
from onnxquant.agreement.binary import BinaryAgreement
from onnxquant.agreement.classification import ClassificationAgreement
from onnxquant.agreement.detection import DetectionAgreement, DetectionSettings, decode_pair, decode_yolo
from onnxquant.agreement.heads import RawHeads, find_raw_heads
from onnxquant.agreement.kinds import (
    detect_kind,
    detection_pairs,
    few_positive_scores,
    loop_pair_note,
    loop_refused_pairs,
)
from onnxquant.agreement.labels import LabelAgreement
from onnxquant.agreement.sequence import SequenceAgreement, detect_blank
from onnxquant.agreement.tensor import SampleMemo, TensorAgreement

# What a search's "drop" is 1 minus: cosine of float outputs; top1 of classifier scores; kind:
# each output's own figure (PRIMARY below).
DROP_BY = ("cosine", "top1", "kind", "fine")

# The one figure per kind that says "how much of the fp32 answer survived" (1 is all of it).
PRIMARY = {"classification": "top1", "embedding": "cosine", "regression": "cosine", "detection": "f1",
           "sequence": "string_agreement", "labels": "label_agreement", "binary": "decision_agreement"}
# The finest figure per kind, for choices made on a few dozen samples, where a top-1 or an exact
# string match moves in steps of one sample: KL for classifiers (scored as exp(-KL)), CER for
# sequences (as 1 - CER), for detections F1 times the score agreement (1 - the mean score gap of
# the fp32 and int8 detections, a lost or an extra box counting its whole score: F1 alone moves a
# whole box at a time); the other kinds' primary figures are fine already (yes/no probabilities:
# the decision agreement, trials flipping as many told apart by the search's cosine tie-break,
# which over one value a sample is how far the probabilities moved).
FINE = {**PRIMARY, "classification": "kl", "sequence": "cer", "detection": "score_agreement"}


def _finite(value: float) -> float | str:
    """JSON has no infinity or NaN: say it in words."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, 6)


class OutputAgreement:
    """Running agreement of one output; its kind is detected from the first fp32 value unless given."""

    def __init__(self, name: str, kind: str | None = None, *, detection: DetectionSettings | None = None,
                 ctc_blank: int | None = None, boxes_of: str | None = None, scores_in: str | None = None,
                 heads: RawHeads | None = None, head_of: str | None = None, hint: str | None = None) -> None:
        """``scores_in``: this output holds the boxes of a pair whose scores are that output;
        ``boxes_of``: this output holds the scores of the pair whose boxes are that output;
        ``heads``: this output carries the detections decoded from those raw heads (it is one of
        them); ``head_of``: this output is a raw head decoded with the others under that output;
        ``hint``: what the graph says of it (``graph_hints``), for detecting its kind."""
        self.name = name
        self.scores_in, self.boxes_of = scores_in, boxes_of
        self.heads, self.head_of = heads, head_of
        if scores_in or boxes_of or heads or head_of:
            kind = kind or "detection"
        self.kind = kind
        self.kind_source = "given" if kind else "detected"
        self.detection_settings = detection or DetectionSettings()
        self.ctc_blank = ctc_blank
        self.hint = hint
        self.samples = 0
        self.mismatched = 0  # samples whose int8 output has another shape or type than fp32's
        self.notes: list[str] = []
        self.kind_hint: str | None = None  # a detected kind that may be wrong, and how to say otherwise
        self.tensor: TensorAgreement | None = None
        self.classes: ClassificationAgreement | None = None
        self.detections: DetectionAgreement | None = None
        self.strings: SequenceAgreement | None = None
        self.labels: LabelAgreement | None = None
        self.binary: BinaryAgreement | None = None

    def begin(self, reference: Any) -> None:
        """Decide how this output is read (its kind, and what that kind needs) from ``reference``,
        an fp32 value of it, before any sample is added; the first sample added does otherwise."""
        if self.tensor is None and self.labels is None:
            self._start(reference)

    def _start(self, reference: Any) -> None:
        if self.kind is None:
            self.kind = detect_kind(self.name, reference, self.hint)
            if self.kind == "classification" and few_positive_scores(reference):
                self.kind_hint = (f"read as class logits ({reference.shape[-1]} values a row, none negative, not "
                                  f"probabilities): --output-kind {self.name}=regression if they are scores, not classes")
        if self.kind == "labels":
            self.labels = LabelAgreement()
            return
        self.tensor = TensorAgreement(per_channel=self.kind in ("regression", "detection"))
        if self.kind == "classification":
            self.classes = ClassificationAgreement()
        elif self.kind == "detection" and not self.boxes_of and not self.head_of:  # decoded with another output
            self.detections = DetectionAgreement(self.detection_settings)
        elif self.kind == "binary":
            self.binary = BinaryAgreement()
        elif self.kind == "sequence":
            blank = self.ctc_blank if self.ctc_blank is not None else detect_blank(reference)
            self.strings = SequenceAgreement(blank)

    def add(self, reference: Any, compressed: Any, scores: tuple[Any, Any] | None = None,
            outputs: tuple[dict[str, Any], dict[str, Any]] | None = None,
            feed: dict[str, np.ndarray] | None = None, memo: SampleMemo | None = None) -> None:
        """One sample; ``scores``: the pair's (fp32, int8) scores when this output holds its boxes;
        ``outputs``: every output by name (fp32, int8) when this output carries raw heads, and
        ``feed`` the sample's inputs (an image of another size lays the heads' grids anew).
        ``memo``: the tensor figures of samples added before (``TensorAgreement.add``)."""
        if self.tensor is None and self.labels is None:
            self._start(reference)
        self.samples += 1
        if self.labels is not None:
            self.labels.add(reference, compressed)
            return
        if not isinstance(reference, np.ndarray) or reference.dtype.kind not in "fiu":
            self.notes.append(f"sample {self.samples - 1}: not a numeric tensor; kind {self.kind} cannot measure it")
            self.mismatched += 1
            return
        if not isinstance(compressed, np.ndarray) or compressed.shape != reference.shape:
            self.mismatched += 1
            self.tensor.cosines.append(0.0)
            self.tensor.max_abs_error = math.inf
            return
        self.tensor.add(reference, compressed, memo)
        try:
            if self.classes is not None:
                self.classes.add(reference, compressed)
            elif self.detections is not None and self.heads is not None:
                heads = self.heads
                if outputs is not None and not heads.fits(outputs[0]):
                    heads = find_raw_heads(outputs[0], feed, like=self.heads) or heads
                if outputs is not None and heads.fits(outputs[0]) and all(
                        _same_shape(outputs[0].get(n), outputs[1].get(n)) for n in heads.outputs):
                    self.detections.add_images(heads.decode(outputs[0], self.detection_settings),
                                               heads.decode(outputs[1], self.detection_settings))
                elif outputs is not None:
                    note = "raw heads whose grids do not fit this sample's image size: not decoded"
                    if note not in self.notes:
                        self.notes.append(note)
            elif self.detections is not None and self.scores_in:
                if scores is not None and isinstance(scores[1], np.ndarray) and scores[1].shape == scores[0].shape:
                    self.detections.add_images(decode_pair(reference, scores[0], self.detection_settings),
                                               decode_pair(compressed, scores[1], self.detection_settings))
            elif self.detections is not None:
                self.detections.add_images(decode_yolo(reference, self.detection_settings),
                                           decode_yolo(compressed, self.detection_settings))
            elif self.strings is not None:
                self.strings.add(reference, compressed)
            elif self.binary is not None:
                self.binary.add(reference, compressed)
        except (ValueError, IndexError) as exc:  # a kind the user forced on an output that does not fit it
            note = f"cannot measure as {self.kind} an output of shape {list(reference.shape)}: {exc}"
            if note not in self.notes:
                self.notes.append(note)

    # figures ------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Every figure measured for this output (numbers; None where nothing could be compared)."""
        out: dict[str, Any] = {}
        if self.labels is not None:
            out.update(self.labels.metrics())
        if self.tensor is not None and self.tensor.cosines:
            t = self.tensor
            mean, lowest = t.cosine_mean_min()
            out.update({"cosine": mean, "cosine_min": lowest, "sqnr_db": t.sqnr_db, "max_abs_error": t.max_abs_error})
            if t.single_values:
                out["cosine_over_samples"] = True
            if t.nonfinite:
                out["nonfinite_samples"] = t.nonfinite
            channels = t.channels()
            if channels:
                out.update(channels)
        for part in (self.classes, self.strings, self.binary):
            if part is not None:
                out.update(part.metrics())
        if self.detections is not None and self.detections.images:
            out.update(self.detections.metrics())
            out["detection_settings"] = self.detection_settings.to_dict()
        return out

    def score(self, by: str = "kind") -> float:
        """One agreement figure in [.., 1] for searches: ``top1`` where the output is a classifier,
        ``cosine`` of float outputs, ``fine``: the kind's finest figure (exp(-KL) of a classifier,
        1 - CER of a sequence), else the kind's primary figure (unmeasured counts as 0)."""
        m = self.metrics()
        if self.mismatched:
            return 0.0
        if by == "cosine" and "cosine" in m:
            name = "cosine"
        elif by == "top1" and "top1" in m:
            name = "top1"
        elif by == "fine" and self.kind == "detection" and m.get("detections_fp32") == 0:
            # fp32 found no box: nothing to lose; boxes int8 invented cost their scores (none: 1)
            return float(m["score_agreement"]) if m.get("score_agreement") is not None else 1.0
        elif by == "fine" and self.kind == "detection" and m.get("f1") is not None \
                and m.get("score_agreement") is not None:
            return float(m["f1"]) * float(m["score_agreement"])  # every box lost: 0, as by F1
        elif by == "fine" and FINE.get(self.kind or "") in ("kl", "cer") and m.get(FINE[self.kind]) is not None:
            value = float(m[FINE[self.kind]])
            if not math.isfinite(value):
                return 0.0
            return math.exp(-value) if FINE[self.kind] == "kl" else max(0.0, 1.0 - value)
        else:
            name = PRIMARY.get(self.kind or "", "cosine")
            if name not in m or m[name] is None:
                name = "cosine" if "cosine" in m else "label_agreement"
        value = m.get(name)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0

    def checks(self, budget: Budget) -> list[dict[str, Any]]:
        """This output's budget checks; passed None: a default budget it could not be measured against."""
        m = self.metrics()
        found = []
        for name, (limit, source) in budget.for_kind(self.kind or "").items():
            metric = OUTPUT_BUDGETS[name][0]
            if (self.boxes_of or self.head_of) and source == "default":
                continue  # judged by the detections reported under the output they are decoded with
            if source == "default" and metric.startswith("channel_") and metric not in m:
                continue  # no feature axis (a one-channel map): there is no channel to single out
            if metric not in m and source == "given":
                continue  # a given budget applies where its metric exists (see unmeasured_budgets)
            result = check(name, metric, m.get(metric), limit, source)
            if result["passed"] is None and source == "given":
                result["passed"] = False  # the user asked for it: not measurable is not a pass
            found.append(result)
        if self.mismatched:
            found.append({"budget": "same_shape", "metric": "mismatched_samples", "value": self.mismatched,
                          "limit": 0, "source": "always", "passed": False})
        return found

    def to_dict(self, budget: Budget | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "kind_source": self.kind_source, "samples": self.samples}
        if self.scores_in:
            out["scores_output"] = self.scores_in
        if self.boxes_of or self.head_of:
            out["decoded_with"] = self.boxes_of or self.head_of
        if self.heads is not None:
            out["raw_heads"] = self.heads.to_dict()
        for key, value in self.metrics().items():
            out[key] = _finite(value) if isinstance(value, float) else value
        if self.mismatched:
            out["mismatched_samples"] = self.mismatched
        if self.notes:
            out["notes"] = self.notes[:5]
        if budget is not None:
            out["checks"] = [{**c, "value": _finite(c["value"]) if isinstance(c["value"], float) else c["value"]}
                             for c in self.checks(budget)]
        return out

    @property
    def decoded_elsewhere(self) -> bool:
        """Judged by the detections of another output (a pair's scores, a raw head's other maps)."""
        return bool(self.boxes_of or self.head_of)


def _same_shape(a: Any, b: Any) -> bool:
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape


def output_agreements(names: list[str], reference: list[Any], feed: dict[str, np.ndarray] | None = None, *,
                      kinds: dict[str, str] | None = None, detection: DetectionSettings | None = None,
                      ctc_blank: int | None = None, hints: dict[str, str] | None = None) -> dict[str, OutputAgreement]:
    """One agreement per output of a model, from its first fp32 outputs (and the sample ``feed``
    that made them, which gives raw detection heads their image size): boxes/scores pairs and raw
    heads are found here and decoded together. ``hints``: ``graph_hints`` of the fp32 model."""
    kinds, hints = kinds or {}, hints or {}
    values = dict(zip(names, reference))
    pairs = detection_pairs(values, kinds, hints)
    boxes_of = {scores: boxes for boxes, scores in pairs.items()}
    stepwise = {name: "sequence" for name, hint in hints.items() if hint == "per_step"}  # not raw heads either
    heads = None if pairs else find_raw_heads(values, feed, {**stepwise, **kinds})
    out = {}
    for name in names:
        carrier = heads is not None and name == heads.carrier
        member = heads is not None and name in heads.outputs and not carrier
        out[name] = OutputAgreement(name, kinds.get(name), detection=detection, ctc_blank=ctc_blank,
                                    scores_in=pairs.get(name), boxes_of=boxes_of.get(name),
                                    heads=heads if carrier else None,
                                    head_of=heads.carrier if member and heads is not None else None,
                                    hint=hints.get(name))
    for boxes, scores in loop_refused_pairs(values, kinds, hints).items():  # said, not silently dropped
        out[boxes].kind_hint = loop_pair_note(boxes, scores)
    return out


def add_outputs(agreements: dict[str, OutputAgreement], names: list[str], reference: list[Any],
                compressed: list[Any], feed: dict[str, np.ndarray] | None = None,
                memo: SampleMemo | None = None) -> None:
    """One sample of every output into ``agreements`` (from ``output_agreements``); ``feed``: its
    inputs; ``memo``: tensor figures kept from scoring the same outputs before."""
    by_name = {name: (ref, out) for name, ref, out in zip(names, reference, compressed)}
    group = (dict(zip(names, reference)), dict(zip(names, compressed)))
    for name, (ref, out) in by_name.items():
        agreement = agreements[name]
        agreement.add(ref, out, by_name[agreement.scores_in] if agreement.scores_in else None,
                      group if agreement.heads is not None else None, feed, memo)


def unmeasured_budgets(outputs: list[OutputAgreement], budget: Budget) -> list[str]:
    """Given budgets that no output has the metric for (a top-1 budget on a model without a classifier)."""
    missing = []
    for name in OUTPUT_BUDGETS:
        if getattr(budget, name) is None:
            continue
        metric = OUTPUT_BUDGETS[name][0]
        if not any(o.metrics().get(metric) is not None for o in outputs):
            kinds = ", ".join(f"{o.name}={o.kind}" for o in outputs) or "none"
            missing.append(f"budget {name.replace('_', '-')} compared nothing: no output has {metric} "
                           f"(outputs: {kinds})")
    return missing
