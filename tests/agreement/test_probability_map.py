"""Probability maps: the search scores them by the F2 score of fp32's thresholded region, which
sees a map that is a little less confident everywhere (regions lost or shrunk) where cosine does not."""
from __future__ import annotations

import numpy as np
import pytest

from onnxquant.agreement import OutputAgreement
from onnxquant.agreement.probability_map import MapAgreement, is_probability_map


def _map() -> np.ndarray:
    """Two text-like blocks at 0.9 with soft edges at 0.4, on a 0.02 background."""
    m = np.full((1, 1, 32, 48), 0.02, np.float32)
    m[0, 0, 4:12, 4:40] = 0.4
    m[0, 0, 5:11, 5:39] = 0.9
    m[0, 0, 20:26, 8:30] = 0.4
    m[0, 0, 21:25, 9:29] = 0.9
    return m


def test_only_single_channel_maps_of_values_in_0_1_count():
    assert is_probability_map(_map())
    assert not is_probability_map(np.repeat(_map(), 3, axis=1))  # an image
    assert not is_probability_map(_map() * 2)  # not in [0, 1]
    assert not is_probability_map(np.full((1, 1, 4, 4), 0.5, np.float32))  # too small to be a map
    assert not is_probability_map(np.full((2, 10), 0.5, np.float32))


def test_counts_at_each_threshold_give_recall_precision_iou_and_f2():
    ref = _map()
    got = ref.copy()
    got[0, 0, 20:26, 8:30] = 0.02  # the second block lost
    agreement = MapAgreement()
    agreement.add(ref, got)
    m = agreement.metrics()
    # at 0.3 fp32 marks 8*36 + 6*22 pixels and keeps the first block's 8*36
    recall = 8 * 36 / (8 * 36 + 6 * 22)
    assert m["map_threshold"] == 0.3 and m["map_recall"] == pytest.approx(recall)
    assert m["map_precision"] == 1.0 and m["map_iou"] == pytest.approx(recall)
    assert m["map_f2"] == pytest.approx(5 * recall / (4 + recall))
    assert m["map_area_ratio"] == pytest.approx(recall)
    assert MapAgreement().metrics() == {}


def test_the_fine_score_prefers_a_faint_halo_to_a_shrunk_region_though_cosine_says_otherwise():
    ref = _map()
    halo = ref.copy()
    halo[halo < 0.1] = 0.25  # background raised, below the thresholds: the region is intact
    shrunk = ref.copy()
    shrunk[(ref > 0.3) & (ref < 0.5)] = 0.2  # soft edges drop below 0.3: every region shrinks
    scores = {}
    for name, got in (("halo", halo), ("shrunk", shrunk)):
        a = OutputAgreement("maps")
        a.add(ref, got)
        assert a.kind == "regression" and a.maps is not None
        scores[name] = (a.metrics()["cosine"], a.score("fine"), a.score("kind"))
    assert scores["halo"][0] < scores["shrunk"][0]  # by cosine the halo is worse
    assert scores["halo"][1] > scores["shrunk"][1]  # by the region, the shrunk map is
    assert scores["halo"][1] == 1.0
    assert scores["halo"][2] == scores["halo"][0]  # the kind's primary figure stays the cosine
