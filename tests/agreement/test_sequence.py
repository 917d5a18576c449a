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


def _time_major_logits(steps: list[int], symbols: int = 40, seed: int = 0) -> np.ndarray:
    """Raw logits (time, 1, symbols), as ddddocr's recogniser writes them."""
    x = np.random.default_rng(seed).normal(0, 1, (len(steps), 1, symbols)).astype(np.float32)
    x[np.arange(len(steps)), 0, steps] += 12.0
    return x


def test_time_major_lines_decode_as_one_string():
    steps = [0, 0, 5, 5, 0, 7, 0, 0, 9, 0]
    assert ctc_greedy(_time_major_logits(steps)) == [(5, 7, 9)]


def test_raw_ctc_logits_are_read_as_sequences_and_a_lost_symbol_costs_cer():
    steps = [0, 0, 5, 5, 0, 7, 0, 0, 9, 0, 0, 0]
    ref = _time_major_logits(steps)
    lost = ref.copy()
    lost[5, 0, 7] -= 20.0  # the 7 is no longer read
    a = OutputAgreement("387")
    a.add(ref, lost)
    m = a.metrics()
    assert a.kind == "sequence" and m["strings"] == 1
    assert m["string_agreement"] == 0.0 and m["cer"] == pytest.approx(1 / 3)


def test_hidden_states_with_an_outlier_dimension_are_not_sequences():
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(1, 64, 96)).astype(np.float32)
    hidden[..., 17] += 30.0  # a "massive activation" dimension wins every token, but it is no edge symbol
    a = OutputAgreement("last_hidden_state")
    a.add(hidden, hidden)
    assert a.kind == "regression"


def test_a_detectors_sigmoid_class_scores_are_not_sequences():
    """PicoDet-style per-anchor class scores in [0, 1], where class 0 wins 36% of anchors."""
    rng = np.random.default_rng(3)
    scores = rng.random((1, 1900, 10)).astype(np.float32) * 0.05
    scores[0, :700, 0] += 0.8
    a = OutputAgreement("transpose_2.tmp_0")
    a.add(scores, scores)
    assert a.kind == "regression"


def test_a_blank_at_the_last_index_is_detected_and_decoded_as_blank():
    """A PyTorch CRNN with its blank last (captcha-whisperer: 37 symbols, blank 36): read with
    blank 0, every blank step would be a symbol and the strings meaningless."""
    blank = 36
    steps = [blank, 3, 3, blank, blank, 12, blank, 20, 20, blank, blank, blank]
    ref = _time_major_logits(steps, symbols=37)
    lost = ref.copy()
    lost[5, 0, 12] -= 20.0  # the 12 is no longer read
    a = OutputAgreement("logits")
    a.add(ref, lost)
    m = a.metrics()
    assert a.kind == "sequence" and m["blank"] == blank
    assert ctc_greedy(ref, blank=m["blank"]) == [(3, 12, 20)]
    assert m["cer"] == pytest.approx(1 / 3)
    given = OutputAgreement("logits", ctc_blank=0)  # the user's --ctc-blank still wins
    given.add(ref, lost)
    assert given.metrics()["blank"] == 0


def test_the_search_and_validate_read_the_same_blank():
    """``output_agreements`` (what the recipe search scores with) detects the blank as
    ``OutputAgreement`` does, and the search scores every leave-one-out subset with it."""
    from onnxquant.agreement import output_agreements
    from onnxquant.mixed_precision import Holdout, score_outputs

    steps = [36, 3, 3, 36, 36, 12, 36, 20, 20, 36, 36, 36]
    ref = _time_major_logits(steps, symbols=37)
    agreements = output_agreements(["logits"], [ref])
    agreements["logits"].add(ref, ref)
    assert agreements["logits"].metrics()["blank"] == 36
    lost = ref.copy()
    lost[5, 0, 12] -= 20.0
    holdout = Holdout([{"x": np.zeros(1, np.float32)}] * 2, [[ref], [ref]], ["logits"], "fine")
    assert score_outputs([[lost], [ref]], holdout).drop == pytest.approx(1 / 6)  # CER 1/3 on one of two
    assert score_outputs([[lost], [ref]], holdout, samples=[0]).drop == pytest.approx(1 / 3)
    assert score_outputs([[ref], [lost]], holdout, samples=[1]).drop == pytest.approx(1 / 3)


@pytest.mark.parametrize("value", [np.float32(1.0), np.zeros((2, 0), np.float32), np.zeros((0, 5), np.float32)])
def test_a_value_without_steps_forced_to_sequence_is_noted_not_raised(value):
    a = OutputAgreement("s", "sequence")
    a.add(value, value)
    assert a.samples == 1
