from __future__ import annotations

import math

import numpy as np
import pytest

from onnxquant.agreement import Budget, OutputAgreement, detect_kind, unmeasured_budgets
from onnxquant.errors import UsageError


def test_identical_outputs_agree_perfectly():
    a = OutputAgreement("out")
    x = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    a.add(x, x.copy())
    d = a.to_dict()
    assert d["kind"] == "classification" and d["cosine"] == pytest.approx(1.0) and d["top1"] == 1.0
    assert d["max_abs_error"] == 0.0 and d["sqnr_db"] == "inf" and d["kl"] == pytest.approx(0.0)


def test_noise_gives_the_expected_sqnr_and_top1():
    a = OutputAgreement("out")
    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    a.add(ref, ref + np.array([[0.0, 0.0, -1.5]], np.float32))  # argmax flips from 2 to 1
    assert math.isclose(a.tensor.sqnr_db, 10 * math.log10(14 / 2.25), rel_tol=1e-6)
    assert a.metrics()["top1"] == 0.0 and a.metrics()["max_abs_error"] == 1.5


def test_zero_against_nonzero_does_not_count_as_agreement():
    a = OutputAgreement("out", "regression")
    a.add(np.zeros(4, np.float32), np.ones(4, np.float32))
    a.add(np.zeros(4, np.float32), np.zeros(4, np.float32))
    assert a.tensor.cosines == [0.0, 1.0]


def test_integer_outputs_are_labels_compared_element_by_element():
    a = OutputAgreement("ids")
    a.add(np.array([1, 2]), np.array([1, 2]))
    a.add(np.array([1, 2]), np.array([1, 3]))
    assert a.kind == "labels" and a.metrics()["label_agreement"] == 0.75


def test_zipmap_rows_agree_by_their_best_key_and_report_each_key():
    a = OutputAgreement("output_probability")
    a.add([{0: 0.2, 1: 0.8}, {0: 0.9, 1: 0.1}], [{0: 0.3, 1: 0.7}, {0: 0.4, 1: 0.6}])
    m = a.metrics()
    assert a.kind == "labels" and m["label_agreement"] == 0.5
    assert m["per_key"]["0"]["max_abs_error"] == pytest.approx(0.5)


def test_kinds_are_detected_from_type_shape_and_values():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(2, 384))
    assert detect_kind("sentence", (unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(np.float32)) == "embedding"
    assert detect_kind("logits", rng.normal(size=(1, 1000)).astype(np.float32)) == "classification"
    probs = rng.random((1, 40, 97)).astype(np.float32)
    assert detect_kind("softmax", probs / probs.sum(-1, keepdims=True)) == "sequence"
    yolo = np.concatenate([rng.random((1, 4, 2100)) * 320, rng.random((1, 3, 2100))], axis=1).astype(np.float32)
    assert detect_kind("output0", yolo) == "detection"
    assert detect_kind("hidden", rng.normal(size=(1, 300, 64)).astype(np.float32)) == "regression"
    assert detect_kind("mask", rng.random((1, 1, 32, 32)).astype(np.float32)) == "regression"
    assert detect_kind("label", np.array([3], np.int64)) == "labels"


def test_a_collapsed_slice_shows_in_the_worst_channel_but_not_in_the_cosine():
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.random((1, 4, 500)) * 300, rng.random((1, 2, 500))], axis=1)
    broken = ref.copy()
    broken[:, 4:] = 0.001  # scores collapsed
    a = OutputAgreement("out", "regression")
    a.add(ref, broken)
    m = a.metrics()
    assert m["cosine"] > 0.99 and m["channel_cosine_min"] < 0.1 and m["channel_sqnr_db_min"] < 1.0
    assert m["channel_axis"] == 1 and m["channel_cosine_worst"] in (4, 5)
    failed = [c for c in a.checks(Budget()) if c["passed"] is False]
    assert [c["budget"] for c in failed] == ["min_channel_cosine"]


def test_nan_outputs_fail_every_budget():
    a = OutputAgreement("out", "embedding")
    ref = np.ones((1, 8), np.float32)
    a.add(ref, np.full((1, 8), np.nan, np.float32))
    assert [c["passed"] for c in a.checks(Budget())] == [False]


@pytest.mark.parametrize("kwargs, message", [
    ({"min_cosine": float("nan")}, "finite"), ({"min_top1": 1.5}, "between 0 and 1"),
    ({"max_abs_error": 0.0}, "positive"), ({"max_kl": float("inf")}, "finite"),
    ({"min_f1": "0.5"}, "number"), ({"max_latency_ratio": -1.0}, "positive"),
])
def test_budget_values_are_checked_where_budgets_are_built(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Budget(**kwargs)


def test_a_given_budget_that_compared_nothing_is_named():
    a = OutputAgreement("sentence", "embedding")
    a.add(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))
    missing = unmeasured_budgets([a], Budget(min_top1=0.9))
    assert len(missing) == 1 and "min-top1 compared nothing" in missing[0] and "sentence=embedding" in missing[0]
    assert unmeasured_budgets([a], Budget(min_cosine=0.9)) == []


def test_given_budgets_replace_defaults_and_no_defaults_means_only_given():
    assert Budget().for_kind("classification")["min_top1"] == (0.6, "default")
    assert Budget(min_top1=0.9).for_kind("classification")["min_top1"] == (0.9, "given")
    assert Budget(defaults=False).for_kind("classification") == {}
    assert set(Budget(min_cosine=0.5, defaults=False).for_kind("labels")) == {"min_cosine"}


def test_confident_probabilities_are_classifier_scores_not_unit_embeddings():
    probs = np.full((1, 214), 1e-6, np.float32)
    probs[0, 7] = 1.0 - probs.sum() + 1e-6
    assert abs(np.linalg.norm(probs) - 1.0) < 1e-3 and detect_kind("target_label", probs) == "classification"


def test_sequences_of_tensors_are_compared_item_by_item():
    a = OutputAgreement("seq")
    a.add([np.array([1.0, 2.0]), np.array([3.0])], [np.array([1.0, 2.0]), np.array([4.0])])
    assert a.kind == "labels" and a.metrics()["label_agreement"] == 0.5


def test_a_single_value_output_is_compared_across_samples_not_by_its_sign():
    # PLCMOS-like: one score a sample. Per sample, the cosine of two numbers of one sign is 1, so a
    # search that read it saw every trial as lossless; across samples the errors show.
    rng = np.random.default_rng(0)
    ref = rng.uniform(1.0, 5.0, size=32)
    noisy = OutputAgreement("mos")
    exact = OutputAgreement("mos")
    for r in ref:
        noisy.add(np.array(r, np.float32), np.array(r + rng.choice([-0.5, 0.5]), np.float32))
        exact.add(np.array(r, np.float32), np.array(r, np.float32))
    m = noisy.metrics()
    assert noisy.kind == "regression" and m["cosine_over_samples"] is True
    assert m["cosine"] == m["cosine_min"] < 0.999 and noisy.score("fine") == pytest.approx(m["cosine"])
    assert exact.score("fine") == pytest.approx(1.0)


def test_outputs_of_several_values_keep_the_per_sample_cosine():
    a = OutputAgreement("map", "regression")
    a.add(np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32))
    a.add(np.array([1.0, 1.0], np.float32), np.array([1.0, 1.0], np.float32))
    m = a.metrics()
    assert m["cosine"] == pytest.approx(0.5) and m["cosine_min"] == pytest.approx(0.0)
    assert "cosine_over_samples" not in m


def test_a_few_positive_scores_read_as_logits_say_how_to_read_them_otherwise():
    # DNSMOS: three opinion scores from 1 to 5 a row look like logits to the numbers alone
    scores = np.array([[3.4, 1.6, 1.7], [3.6, 4.4, 3.5]], np.float32)
    mos = OutputAgreement("Identity:0")
    mos.add(scores, scores + 0.01)
    assert mos.kind == "classification" and "--output-kind Identity:0=regression" in mos.kind_hint
    logits = OutputAgreement("logits")
    logits.add(np.array([[2.0, -1.0, 0.5]], np.float32), np.array([[2.0, -1.0, 0.5]], np.float32))
    given = OutputAgreement("Identity:0", "regression")
    given.add(scores, scores)
    many = OutputAgreement("scores")
    many.add(np.abs(np.random.default_rng(0).normal(size=(2, 10))).astype(np.float32) + 1, np.ones((2, 10), np.float32))
    assert logits.kind_hint is None and given.kind_hint is None and many.kind_hint is None
