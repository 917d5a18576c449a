from __future__ import annotations

import numpy as np
import pytest

from onnxquant.agreement import OutputAgreement
from onnxquant.agreement.sequence import ctc_greedy, edit_distance


def _one_hot(steps: list[int], symbols: int = 5) -> np.ndarray:
    x = np.full((1, len(steps), symbols), 0.01, np.float32)
    x[0, np.arange(len(steps)), steps] = 1.0 - 0.01 * (symbols - 1)
    return x


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    assert ctc_greedy(_one_hot([0, 1, 1, 0, 1, 2, 2, 0])) == [(1, 1, 2)]
    assert ctc_greedy(_one_hot([4, 1, 4, 4, 2]), blank=4) == [(1, 2)]


def test_edit_distance():
    assert edit_distance((1, 2, 3), (1, 3)) == 1
    assert edit_distance((), (1, 2)) == 2
    assert edit_distance((1, 2, 3, 4), (2, 1, 3, 4)) == 2


def test_sequence_agreement_reports_strings_and_cer():
    a = OutputAgreement("softmax")
    a.add(_one_hot([1, 0, 2, 0, 3, 3]), _one_hot([1, 0, 2, 0, 3, 3]))
    a.add(_one_hot([1, 0, 2, 0, 3, 3]), _one_hot([1, 0, 4, 0, 3, 3]))  # one symbol substituted
    m = a.metrics()
    assert a.kind == "sequence" and m["string_agreement"] == 0.5 and m["cer"] == pytest.approx(1 / 6)
