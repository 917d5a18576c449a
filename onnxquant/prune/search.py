"""The largest sparsity (or channel fraction) whose float model stays within a drop budget."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxquant.mixed_precision import Holdout, Metric, bisect_boundary, measure
from onnxquant.prune.pipeline import PruneReport
from onnxquant.recipe import PruneSettings

STEP = 0.05  # the search grid; finer steps cost trials and the held-out drop is noisier than that
DEFAULT_UPPER = 0.95


@dataclass
class SearchResult:
    amount: float
    drop: float
    model: onnx.ModelProto
    report: PruneReport
    budget: float
    trials: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "amount": self.amount, "drop": round(self.drop, 6), "trials": self.trials}


def upper_amount(settings: PruneSettings) -> float:
    """The largest amount to try: the settings' own value, if given."""
    if settings.sparsity is not None:
        return settings.sparsity
    if settings.channels is not None:
        return settings.channels
    return DEFAULT_UPPER


def grid(upper: float) -> list[float]:
    steps = [round(STEP * k, 4) for k in range(1, int(upper / STEP + 1e-9) + 1)]
    return sorted({*steps, round(upper, 4)} - {0.0})


def search_amount(pruned: Callable[[float], tuple[onnx.ModelProto, PruneReport]], holdout: Holdout,
                  max_drop: float, upper: float, metric: Metric | None = None) -> SearchResult:
    """Bisect the grid up to ``upper`` for the largest amount whose drop against fp32 is within
    ``max_drop``, assuming the drop grows with the amount. Amount 0 always qualifies."""
    amounts = grid(upper)
    results: dict[int, SearchResult] = {}
    trials: list[dict[str, float]] = []

    def trial(k: int) -> bool:
        amount = amounts[k] if k >= 0 else 0.0
        model, report = pruned(amount)
        drop = measure(model, holdout, metric).drop
        trials.append({"amount": amount, "drop": round(drop, 6)})
        results[k] = SearchResult(amount, drop, model, report, max_drop)
        return drop <= max_drop

    top = len(amounts) - 1
    best = top if amounts and trial(top) else bisect_boundary(trial, good=-1, bad=top)
    if best not in results:  # nothing above zero fits (or no amount to try)
        trial(best)
    found = results[best]
    found.trials = trials
    return found
