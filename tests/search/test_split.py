"""Which calibration samples the search holds out: one per block, spread over the order, never in
step with a period of the data."""
from __future__ import annotations

import numpy as np

from onnxquant.calibration.sources import from_iterable
from onnxquant.search.split import held_out_position, one_per_block


def _numbers(source) -> list[int]:
    return [int(s["x"][0]) for s in source]


def test_one_sample_of_every_block_is_held_out_and_a_partial_last_block_is_kept():
    source = from_iterable([{"x": np.array([i])} for i in range(42)])
    held, kept = one_per_block(source, 4, held_out=True), one_per_block(source, 4, held_out=False)
    assert (len(held), len(kept)) == (10, 32)
    assert sorted(_numbers(held) + _numbers(kept)) == list(range(42))
    assert [n // 4 for n in _numbers(held)] == list(range(10))  # one in each full block
    assert set(_numbers(kept)) >= {40, 41}  # the partial block
    assert _numbers(held) == _numbers(one_per_block(source, 4, held_out=True))  # re-iterable, the same split


def test_the_held_out_place_moves_so_a_period_in_the_data_does_not_line_up():
    # MTCNN O-Net's calibration crops: face, non-face, non-face, face, ... (every 4th: all faces)
    kinds = ["face", "other", "other", "face"] * 20
    source = from_iterable([{"x": np.array([i])} for i in range(len(kinds))])
    held = [kinds[n] for n in _numbers(one_per_block(source, 4, held_out=True))]
    assert 5 <= held.count("face") <= 15
    assert {held_out_position(b, 4) for b in range(8)} == {0, 1, 2, 3}
    assert [held_out_position(b, 4) for b in range(6)] == [3, 1, 2, 1, 2, 2]  # fixed: the same on every machine
