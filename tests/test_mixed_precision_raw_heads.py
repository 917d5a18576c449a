"""The search's drop reads raw detection heads by their decoded detections, not their maps' cosine."""
from __future__ import annotations

import pytest

from onnxquant.mixed_precision import Holdout, measure


@pytest.fixture(scope="module")
def picodet():
    from models import tiny_picodet

    model = tiny_picodet.network()
    return model, Holdout.from_samples(model, tiny_picodet.samples("holdout"), agreement="fine")


def test_lost_detections_are_the_whole_drop_and_kept_ones_none(picodet):
    from models import tiny_picodet

    model, holdout = picodet
    lifted = measure(tiny_picodet.network(score_floor=0.15), holdout)
    assert lifted.drop == 0.0 and lifted.scores == {"out0": 1.0}
    assert lifted.cosine_drop > 0.2  # the score maps' cosine: what the drop was before
    assert measure(tiny_picodet.network(class_bias=-11.0), holdout).drop == 1.0
    by_cosine = Holdout(holdout.feeds, holdout.references, holdout.output_names, "cosine")
    assert measure(tiny_picodet.network(score_floor=0.15), by_cosine).drop == pytest.approx(lifted.cosine_drop)
