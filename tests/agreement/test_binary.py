from __future__ import annotations

import numpy as np
import pytest

from onnxquant.agreement import Budget, OutputAgreement
from onnxquant.agreement.kinds import detect_kind


def _p(*values: float) -> np.ndarray:
    return np.array(values, np.float32).reshape(-1, 1)


def test_a_sigmoid_hint_makes_one_probability_per_sample_binary():
    assert detect_kind("p", _p(0.2), "binary") == "binary"
    assert detect_kind("p", np.array([0.2, 0.9], np.float32), "binary") == "binary"  # (N,)
    assert detect_kind("p", _p(0.2)) == "regression"  # without the graph's word: a regression value
    assert detect_kind("p", np.full((1, 3), 0.2, np.float32), "binary") != "binary"  # three values a sample
    assert detect_kind("p", _p(1.5), "binary") == "regression"  # not a probability


def test_decisions_flipped_and_probability_changes_are_reported_and_budgeted():
    a = OutputAgreement("p", hint="binary")
    for ref, out in ((0.1, 0.12), (0.7, 0.69), (0.48, 0.53), (0.9, 0.91)):  # one decision flipped by 0.05
        a.add(_p(ref), _p(out))
    m = a.metrics()
    assert a.kind == "binary" and a.kind_source == "detected"
    assert m["decision_agreement"] == 0.75 and m["decisions"] == 4
    assert m["max_probability_change"] == pytest.approx(0.05, abs=1e-6)
    assert m["mean_probability_change"] == pytest.approx(0.0225, abs=1e-6)
    checks = {c["budget"]: c["passed"] for c in a.checks(Budget())}
    assert checks == {"min_decision_agreement": False, "max_probability_change": True}
    assert a.score("fine") == a.score("kind") == 0.75  # the search's drop: 1 - decision agreement


def test_a_large_move_fails_even_without_a_flip():
    a = OutputAgreement("p", kind="binary")
    a.add(_p(0.9, 0.1), _p(0.6, 0.1))
    checks = {c["budget"]: c["passed"] for c in a.checks(Budget())}
    assert checks == {"min_decision_agreement": True, "max_probability_change": False}


def test_equal_decisions_are_told_apart_by_the_cosine_tie_break():
    near, far = OutputAgreement("p", kind="binary"), OutputAgreement("p", kind="binary")
    near.add(_p(0.2, 0.8), _p(0.21, 0.79))
    far.add(_p(0.2, 0.8), _p(0.4, 0.6))
    assert near.score("fine") == far.score("fine") == 1.0
    assert near.metrics()["cosine"] > far.metrics()["cosine"]
    assert near.metrics()["mean_probability_change"] < far.metrics()["mean_probability_change"]


def test_binary_budgets_are_checked_where_built():
    from onnxquant.errors import UsageError

    with pytest.raises(UsageError):
        Budget(max_probability_change=1.5)
    assert Budget(min_decision_agreement=0.9).for_kind("binary")["min_decision_agreement"] == (0.9, "given")


def test_a_nan_output_never_agrees_with_a_no_and_fails_the_budget():
    a = OutputAgreement("p", hint="binary")
    a.add(_p(0.1, 0.2, 0.3, 0.05), _p(np.nan, np.nan, np.inf, 0.05))
    m = a.metrics()
    assert m["decision_agreement"] == 0.25  # only the finite sample agrees
    assert m["max_probability_change"] == np.inf and m["mean_probability_change"] == np.inf
    checks = {c["budget"]: c["passed"] for c in a.checks(Budget())}
    assert checks == {"min_decision_agreement": False, "max_probability_change": False}
    assert a.score("fine") == 0.25
