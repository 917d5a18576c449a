from __future__ import annotations

import math

import numpy as np
import pytest

from onnxquant.agreement import OutputAgreement


def test_identical_outputs_agree_perfectly():
    a = OutputAgreement("out")
    x = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    a.add(x, x.copy())
    d = a.to_dict()
    assert d["cosine"] == pytest.approx(1.0) and d["top1"] == 1.0 and d["max_abs_error"] == 0.0 and d["sqnr_db"] == "inf"


def test_noise_gives_the_expected_sqnr_and_top1():
    a = OutputAgreement("out")
    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    a.add(ref, ref + np.array([[0.0, 0.0, -1.5]], np.float32))  # argmax flips from 2 to 1
    assert math.isclose(a.sqnr_db, 10 * math.log10(14 / 2.25), rel_tol=1e-6)
    assert a.to_dict()["top1"] == 0.0
    assert a.max_abs_error == 1.5


def test_zero_against_nonzero_does_not_count_as_agreement():
    a = OutputAgreement("out")
    a.add(np.zeros(4, np.float32), np.ones(4, np.float32))
    a.add(np.zeros(4, np.float32), np.zeros(4, np.float32))
    assert a.cosines == [0.0, 1.0]


def test_integer_outputs_are_compared_exactly():
    a = OutputAgreement("ids")
    a.add(np.array([1, 2]), np.array([1, 2]))
    a.add(np.array([1, 2]), np.array([1, 3]))
    assert a.to_dict() == {"samples": 2, "exact_match": 0.5}
