"""The search report's warning: said when the chosen model misses validate's default budgets on
the held-out calibration samples, and only then."""
from __future__ import annotations

import json

from onnxquant.search.report import SearchReport, TrialResult


def _trial(name: str, drop: float, misses: tuple[str, ...] = ()) -> TrialResult:
    return TrialResult(name, {}, drop, drop, 0.5, misses=misses)


def test_the_chosen_trials_misses_are_warned():
    misses = ("logits: kl 0.61 > 0.5 (default)",)
    report = SearchReport(trials=[_trial("as given", 0.4, misses), _trial("mse", 0.1)], chosen="as given",
                          scored_samples=32)
    warning = report.warning()
    assert warning is not None
    assert ("the chosen recipe (as given), calibrated without them, misses validate's default budgets on 32 "
            "held-out") in warning
    assert "logits: kl 0.61 > 0.5 (default)" in warning and "onnxquant validate" in warning
    assert report.to_dict()["trials"][0]["misses"] == list(misses)
    assert "misses" not in json.loads(report.metadata())["trials"][0]  # the metadata stays small


def test_no_warning_when_the_chosen_trial_meets_the_defaults():
    report = SearchReport(trials=[_trial("as given", 0.4, ("out: cosine 0.9 < 0.95 (default)",)),
                                  _trial("mse", 0.01)], chosen="mse", scored_samples=32)
    assert report.warning() is None
    assert SearchReport(skipped="no held-out samples").warning() is None


def test_a_large_drop_without_misses_is_still_warned():
    report = SearchReport(trials=[_trial("as given", 0.3)], chosen="as given", scored_samples=20, drop_by="fine")
    warning = report.warning()
    assert warning is not None and warning.startswith("the recipe search's best recipe (as given) still loses 0.30")


def test_an_unsearched_choice_warns_from_its_own_score_and_lists_at_most_three():
    misses = tuple(f"out{i}: cosine 0.{i} < 0.95 (default)" for i in range(5))
    report = SearchReport(chosen="float compute", scored_samples=12, unsearched="decided up front", drop=0.5,
                          misses=misses)
    warning = report.warning()
    assert warning is not None and "out2" in warning and "out3" not in warning and "and 2 more" in warning
