"""Budgets: the limits each output kind must meet, their defaults, and the checks against them.

Every budget value is checked once, here, where a Budget is built: a number, finite, in range.
Defaults are per output kind (see DEFAULTS and the README's table): a healthy int8 model meets
them, a broken one does not. A budget the user gave replaces the default of the same name and
applies to every output that has the metric; a given budget that no output could be measured
against is a failure, a default one is a stated note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from onnxquant.errors import UsageError

# budget name -> (metric in the output's figures, "min" or "max", lowest allowed, highest allowed)
OUTPUT_BUDGETS: dict[str, tuple[str, str, float, float]] = {
    "min_top1": ("top1", "min", 0.0, 1.0),
    "min_top5": ("top5", "min", 0.0, 1.0),
    "max_kl": ("kl", "max", 0.0, math.inf),
    "min_cosine": ("cosine", "min", -1.0, 1.0),
    "min_sqnr_db": ("sqnr_db", "min", -math.inf, math.inf),
    "max_abs_error": ("max_abs_error", "max", 0.0, math.inf),
    "min_channel_cosine": ("channel_cosine_min", "min", -1.0, 1.0),
    "min_channel_sqnr_db": ("channel_sqnr_db_min", "min", -math.inf, math.inf),
    "min_f1": ("f1", "min", 0.0, 1.0),
    "min_recall": ("recall", "min", 0.0, 1.0),
    "min_string_agreement": ("string_agreement", "min", 0.0, 1.0),
    "max_cer": ("cer", "max", 0.0, math.inf),
    "min_label_agreement": ("label_agreement", "min", 0.0, 1.0),
    "min_decision_agreement": ("decision_agreement", "min", 0.0, 1.0),
    "max_probability_change": ("max_probability_change", "max", 0.0, 1.0),
}

# Defaults per kind, measured on healthy and broken int8 models (README, "Default budgets").
DEFAULTS: dict[str, dict[str, float]] = {
    "classification": {"min_top1": 0.6, "max_kl": 0.5},
    "embedding": {"min_cosine": 0.95},
    "regression": {"min_sqnr_db": 8.0, "min_channel_cosine": 0.8},
    "detection": {"min_f1": 0.7},
    "sequence": {"max_cer": 0.05},  # string agreement depends on line length: reported, not budgeted
    "labels": {"min_label_agreement": 0.6},
    # yes/no probabilities: below 50 decisions 0.98 allows no flip; a 0.1 move is a sure sign of damage
    "binary": {"min_decision_agreement": 0.98, "max_probability_change": 0.1},
}
DEFAULT_MAX_METRIC_DROP = 0.02  # a --metric's mean score may drop this much (scores in 0..1)


def _check_number(name: str, value: Any, lo: float, hi: float, positive: bool = False) -> float:
    label = name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"budget {label} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageError(f"budget {label} must be a finite number, got {value}")
    if positive and value <= 0:
        raise UsageError(f"budget {label} must be positive, got {value}")
    if not lo <= value <= hi:
        raise UsageError(f"budget {label} must be between {lo:g} and {hi:g}, got {value}")
    return value


@dataclass(frozen=True)
class Budget:
    """Limits the compressed model must meet on every provider; None: the kind's default (or none)."""

    min_top1: float | None = None  # top-1 agreement of classifier scores
    min_top5: float | None = None
    max_kl: float | None = None  # mean KL(fp32 || int8) of the class distributions, nats
    min_cosine: float | None = None  # mean cosine similarity per float output
    min_sqnr_db: float | None = None
    max_abs_error: float | None = None
    min_channel_cosine: float | None = None  # the worst channel along the feature axis
    min_channel_sqnr_db: float | None = None
    min_f1: float | None = None  # detections: F1 of int8 against fp32 at IoU >= 0.5
    min_recall: float | None = None
    min_string_agreement: float | None = None  # sequences: decoded strings equal to fp32's
    max_cer: float | None = None  # character error rate against fp32's strings
    min_label_agreement: float | None = None  # labels and maps
    min_decision_agreement: float | None = None  # binary: decisions at 0.5 equal to fp32's
    max_probability_change: float | None = None  # binary: largest absolute probability change
    max_metric_drop: float | None = None  # your --metric: fp32 mean score minus int8 mean score
    max_latency_ratio: float | None = None  # compressed / original median latency, same provider
    require_on_ep: bool = False  # every node but the input/output boundary runs on the provider
    defaults: bool = True  # apply DEFAULTS where no budget of that name is given

    def __post_init__(self) -> None:
        for name, (_, _, lo, hi) in OUTPUT_BUDGETS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_number(name, value, lo, hi, positive=name == "max_abs_error"))
        if self.max_metric_drop is not None:
            object.__setattr__(self, "max_metric_drop",
                               _check_number("max_metric_drop", self.max_metric_drop, -math.inf, math.inf))
        if self.max_latency_ratio is not None:
            object.__setattr__(self, "max_latency_ratio", _check_number(
                "max_latency_ratio", self.max_latency_ratio, 0.0, math.inf, positive=True))
        for name in ("require_on_ep", "defaults"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name.replace('_', '-')} must be true or false")

    def given(self) -> dict[str, Any]:
        """The budgets the user set (no defaults), for reports."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "defaults" and getattr(self, f.name) not in (None, False)}

    def for_kind(self, kind: str) -> dict[str, tuple[float, str]]:
        """Output budgets for an output of ``kind``: name -> (limit, "given" or "default")."""
        out = {name: (float(value), "given") for name in OUTPUT_BUDGETS
               if (value := getattr(self, name)) is not None}
        if self.defaults:
            for name, value in DEFAULTS.get(kind, {}).items():
                out.setdefault(name, (value, "default"))
        return out

    def metric_drop(self) -> tuple[float, str] | None:
        if self.max_metric_drop is not None:
            return self.max_metric_drop, "given"
        return (DEFAULT_MAX_METRIC_DROP, "default") if self.defaults else None


def check(budget: str, metric: str, value: Any, limit: float, source: str) -> dict[str, Any]:
    """One budget check as reported: passed is None when the metric could not be measured."""
    bound = "max" if budget.startswith("max") else "min"
    number = _as_number(value)
    if number is None:
        passed = None
    elif math.isnan(number):
        passed = False
    else:
        passed = number >= limit if bound == "min" else number <= limit
    return {"budget": budget, "metric": metric, "value": value, "limit": limit, "source": source, "passed": passed}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):  # "inf" / "-inf" / "nan" as written in JSON
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) else None


def _shown(value: Any, digits: int) -> str:
    number = _as_number(value)
    if number is None:
        return "not measured" if value is None else str(value)
    return f"{number:.{digits}g}" if math.isfinite(number) else str(number)


def describe(c: Any) -> str:
    """A check in words: 'top1 0.0667 < 0.6 (default)'. Safe on any JSON-shaped input."""
    if not isinstance(c, dict):
        return str(c)
    budget = str(c.get("budget", ""))
    op = "<=" if budget.startswith("max") else ">="
    if c.get("passed") is False:
        op = {"<=": ">", ">=": "<"}[op]
    metric = str(c.get("metric", budget)).replace("_", " ")
    return f"{metric} {_shown(c.get('value'), 6)} {op} {_shown(c.get('limit'), 10)} ({c.get('source', '')})"
