"""Sensitivity analysis and automatic mixed precision against an accuracy budget.

Sensitivity: each weighted layer (Conv, Gemm, MatMul...) is quantized alone and the model's
outputs are compared with fp32 on held-out samples; the list is sorted by damage. Mixed
precision keeps the most damaging layers in float, as few as possible: it doubles the count
until the budget holds, then bisects back to the smallest count that still holds.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxquant.agreement import DROP_BY, OutputAgreement, add_outputs, output_agreements
from onnxquant.agreement.graph_hints import graph_hints
from onnxquant.agreement.kinds import loop_pair_note, loop_refused_pairs
from onnxquant.agreement.budgets import DEFAULT_MAX_METRIC_DROP, DEFAULTS, Budget, describe
from onnxquant.agreement.tensor import SampleMemo
from onnxquant.calibration.collector import in_order, make_session, sample_workers
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.errors import BudgetExceededError, CalibrationDataError, UsageError
from onnxquant.model_io import serialize

AGREEMENTS = DROP_BY

# A user metric scores a model from its outputs on every held-out sample (higher is better);
# the drop is the fp32 score minus the quantized score.
Metric = Callable[[list[list[np.ndarray]]], float]


@dataclass
class Holdout:
    """Held-out feeds and the fp32 outputs for them, computed once."""

    feeds: list[dict[str, np.ndarray]]
    references: list[list[np.ndarray]]
    output_names: list[str]
    agreement: str = "cosine"  # or "top1" for classifier scores (see ``measure``)
    hints: dict[str, str] = field(default_factory=dict)  # graph_hints of the model: how outputs are read
    kinds: dict[str, str] = field(default_factory=dict)  # output kinds the user gave (--output-kind)

    def loop_pair_notes(self) -> tuple[str, ...]:
        """Validate's note for each boxes/scores pair a Loop or Scan keeps apart (read on their own:
        a decoder's, or a detector's whose NMS is a Loop), so quantize says it too."""
        if not self.references:
            return ()
        values = dict(zip(self.output_names, self.references[0]))
        return tuple(f"output {boxes!r}: {loop_pair_note(boxes, scores)}"
                     for boxes, scores in loop_refused_pairs(values, self.kinds, self.hints).items())

    @classmethod
    def from_samples(cls, model: onnx.ModelProto, samples: Iterable[dict[str, np.ndarray]],
                     max_samples: int | None = None, agreement: str = "cosine",
                     kinds: dict[str, str] | None = None) -> Holdout:
        if agreement not in AGREEMENTS:
            raise UsageError(f"agreement {agreement!r} unknown; choose from {', '.join(AGREEMENTS)}")
        session = make_session(lambda: serialize(model), threads=1, weights=model,  # bits independent of --threads
                               concurrent_runs=True)
        specs = input_specs(model)

        def run(index: int, raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
            feed = check_feed(raw, specs, index)
            return feed, session.run(None, feed)

        feeds, refs = [], []
        for feed, ref in in_order(run, samples, max_samples, sample_workers()):
            feeds.append(feed)
            refs.append(ref)
        if not feeds:
            raise CalibrationDataError("no held-out samples were read")
        return cls(feeds, refs, [o.name for o in session.get_outputs()], agreement, graph_hints(model),
                   dict(kinds or {}))


@dataclass
class Measurement:
    drop: float
    scores: dict[str, float]  # per output: top-1 agreement, mean cosine or exact-match rate
    # 1 - worst mean cosine (a yes/no output: its BinaryAgreement.closeness): a finer tie-break than
    # top-1 agreement on a few dozen samples
    cosine_drop: float = 0.0
    sqnr_db: float = math.inf  # worst float output's SQNR
    # validate's default budgets this model misses on these samples ("out: kl 0.62 > 0.5 (default)");
    # measured on the whole set only (a leave-one-out subset does not say it)
    misses: tuple[str, ...] = ()


def measure(quantized: onnx.ModelProto | bytes, holdout: Holdout, metric: Metric | None = None) -> Measurement:
    """Drop of ``quantized`` against fp32 on the held-out samples.

    Default: 1 minus the worst output's mean cosine. ``holdout.agreement == "top1"``: top-1
    agreement for outputs that ``onnxquant.agreement`` reads as classifier scores (others keep
    their kind's figure). Outputs that are not float tensors (labels, maps) count by their
    agreement rate. With ``metric``: the user's score, fp32 minus quantized.
    """
    return score_outputs(run_holdout(quantized, holdout), holdout, metric)


def run_holdout(quantized: onnx.ModelProto | bytes, holdout: Holdout) -> list[list[np.ndarray]]:
    """The outputs of ``quantized`` on every held-out feed, in order."""
    session = make_session(quantized if isinstance(quantized, bytes) else lambda: serialize(quantized), threads=1,
                           weights=None if isinstance(quantized, bytes) else quantized, concurrent_runs=True)
    return list(in_order(lambda _, feed: session.run(None, feed), holdout.feeds, None, sample_workers()))


def score_outputs(outputs: list[list[np.ndarray]], holdout: Holdout, metric: Metric | None = None,
                  samples: Sequence[int] | None = None, memo: SampleMemo | None = None) -> Measurement:
    """The drop (as ``measure``) of ``outputs`` against the references, on the held-out samples
    at ``samples`` (all by default): a subset scores the same way, for leave-one-out estimates
    of its noise. ``memo``: per-sample tensor figures shared by the scorings of one ``outputs``."""
    picked = range(len(outputs)) if samples is None else samples
    references = [holdout.references[i] for i in picked]
    outputs = [outputs[i] for i in picked]
    if metric is not None:
        base, got = float(metric(references)), float(metric(outputs))
        missed = samples is None and not base - got <= DEFAULT_MAX_METRIC_DROP  # (a NaN drop misses too)
        misses = (f"metric drop {base - got:.4g} > {DEFAULT_MAX_METRIC_DROP:g} (default)",) if missed else ()
        return Measurement(base - got, {"metric_fp32": base, "metric": got}, misses=misses)
    agreement_by = holdout.agreement
    scores, cosines, sqnrs = {}, [1.0], []
    names = holdout.output_names
    # boxes/scores pairs and raw detection heads are decoded together and scored by their detections;
    # how each output is read (its kind, pairs, heads, CTC blank) comes from the first held-out
    # sample whatever the subset, so a leave-one-out subset is scored in the same units
    if references:
        first = holdout.references[0]
        agreements = output_agreements(names, first, holdout.feeds[0], kinds=holdout.kinds,
                                       hints=holdout.hints)
        for name, value in zip(names, first):
            agreements[name].begin(value)
    else:
        agreements = {name: OutputAgreement(name) for name in names}
    for i, ref, out in zip(picked, references, outputs):
        add_outputs(agreements, names, ref, out, holdout.feeds[i], memo)
    for name, agreement in agreements.items():
        if not agreement.decoded_elsewhere or agreement_by == "cosine":
            scores[name] = agreement.score(agreement_by)
        if agreement.binary is not None and agreement.binary.decisions:
            # yes/no probabilities: how far they moved, which a cosine over samples does not say
            cosines.append(agreement.binary.closeness(DEFAULTS["binary"]["max_probability_change"]))
        elif agreement.tensor is not None and agreement.tensor.cosines:
            cosines.append(agreement.tensor.cosine_mean_min()[0])
        if agreement.tensor is not None and agreement.tensor.cosines:
            sqnrs.append(agreement.tensor.sqnr_db)
    misses = _default_budget_misses(agreements) if samples is None else ()
    return Measurement(1.0 - min(scores.values()), scores, 1.0 - min(cosines), min(sqnrs, default=math.inf), misses)


def _default_budget_misses(agreements: dict[str, OutputAgreement]) -> tuple[str, ...]:
    """Each output's failed checks against validate's default budgets, in words."""
    budget = Budget()
    return tuple(f"{name}: {describe(c)}" for name, agreement in agreements.items()
                 for c in agreement.checks(budget) if c["passed"] is False)


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    drop: float  # of the model with this layer alone quantized
    scores: dict[str, float]
    cosine_drop: float = 0.0
    sqnr_db: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "drop": round(self.drop, 6),
                "cosine_drop": round(self.cosine_drop, 6),
                "sqnr_db": round(self.sqnr_db, 3) if math.isfinite(self.sqnr_db) else "inf",
                "scores": {k: round(v, 6) for k, v in self.scores.items()}}


def rank_layers(units: Sequence[tuple[str, str]], quantize_alone: Callable[[str], onnx.ModelProto | None],
                holdout: Holdout, metric: Metric | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[LayerSensitivity]:
    """Each (node, op type) quantized alone, most damaging first (ties: graph order)."""
    found = []
    for index, (node, op_type) in enumerate(units):
        model = quantize_alone(node)
        if model is not None:
            m = measure(model, holdout, metric)
            found.append((index, LayerSensitivity(node, op_type, m.drop, m.scores, m.cosine_drop, m.sqnr_db)))
        if progress:
            progress(index + 1, len(units))
    found.sort(key=lambda item: (-item[1].drop, -item[1].cosine_drop, item[0]))
    return [s for _, s in found]


@dataclass
class MixedPrecisionResult:
    model: onnx.ModelProto
    float_layers: list[str]
    drop: float
    budget: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)
    int4_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "drop": round(self.drop, 6), "float_layers": self.float_layers,
                "int4_layers": self.int4_layers, "trials": self.trials,
                "sensitivity": [s.to_dict() for s in self.ranking]}


def bisect_boundary(trial: Callable[[int], bool], good: int, bad: int) -> int:
    """The passing count next to the boundary between ``good`` (passes) and ``bad`` (fails),
    in either direction, assuming the trials change sides only once between them."""
    while abs(good - bad) > 1:
        middle = (good + bad) // 2
        if trial(middle):
            good = middle
        else:
            bad = middle
    return good


def search(build: Callable[[tuple[str, ...]], onnx.ModelProto], ranking: list[LayerSensitivity],
           holdout: Holdout, max_drop: float, metric: Metric | None = None,
           full: tuple[onnx.ModelProto, Measurement] | None = None) -> MixedPrecisionResult:
    """The fewest most-sensitive layers kept float such that the drop is within ``max_drop``.

    ``build(excluded)`` quantizes everything but ``excluded``. Raises ``BudgetExceededError``
    when even every ranked layer in float misses the budget.
    """
    order = [s.node for s in ranking]
    trials: list[dict[str, Any]] = []
    results: dict[int, tuple[onnx.ModelProto, float]] = {}

    def trial(k: int) -> bool:
        if k == 0 and full is not None:
            model, m = full
        else:
            model = build(tuple(order[:k]))
            m = measure(model, holdout, metric)
        trials.append({"float_layers": k, "drop": round(m.drop, 6)})
        results[k] = (model, m.drop)
        return m.drop <= max_drop

    def done(k: int) -> MixedPrecisionResult:
        model, drop = results[k]
        return MixedPrecisionResult(model, order[:k], drop, max_drop, trials, ranking)

    if trial(0):
        return done(0)
    failing, k = 0, 1
    while True:
        k = min(k, len(order))
        if trial(k):
            break
        if k == len(order):
            best = min(results.values(), key=lambda r: r[1])[1]
            raise BudgetExceededError(
                f"accuracy budget {max_drop} not met: the smallest drop reached is {best:.4f} with all "
                f"{len(order)} weighted layers in float (the rest of the int8 graph costs more)")
        failing, k = k, k * 2
    return done(bisect_boundary(trial, good=k, bad=failing))  # the drop shrinks as more layers stay float


def widen_int4(build: Callable[[tuple[str, ...]], onnx.ModelProto], candidates: list[str], holdout: Holdout,
               max_drop: float, metric: Metric | None, base: MixedPrecisionResult) -> MixedPrecisionResult:
    """The longest prefix of ``candidates`` (least sensitive first) given 4-bit weights such
    that the drop stays within ``max_drop``; ``base`` (no int4) already meets it."""
    if not candidates:
        return base
    results: dict[int, tuple[onnx.ModelProto, float]] = {0: (base.model, base.drop)}

    def trial(k: int) -> bool:
        model = build(tuple(candidates[:k]))
        m = measure(model, holdout, metric)
        base.trials.append({"float_layers": len(base.float_layers), "int4_layers": k, "drop": round(m.drop, 6)})
        results[k] = (model, m.drop)
        return m.drop <= max_drop

    everything = len(candidates)
    passing = everything if trial(everything) else bisect_boundary(trial, good=0, bad=everything)  # more int4, more drop
    model, drop = results[passing]
    base.model, base.drop, base.int4_layers = model, drop, candidates[:passing]
    return base
