"""The per-stage breakdown of a quantize call: every stage named, own times that add up to at
most the total, and the clock itself (nesting, calls, no clock outside a library call)."""
from __future__ import annotations

from pathlib import Path

import pytest

import onnxquant
from models.tiny import image_samples, tiny_cnn
from onnxquant.pipeline.clock import STAGES, StageClock, peak_rss_mb, stage_clock, timed

# Every run of the pipeline passes these (search, mixed precision and the fusion check depend on the settings).
ALWAYS = ["load", "prepare", "prune", "smooth", "calibrate", "plan", "recover", "rewrite", "check", "save"]


def _consistent(result: onnxquant.QuantizeResult) -> None:
    stages = result.stages
    assert set(ALWAYS) <= set(stages) <= set(STAGES)
    assert list(stages) == [s for s in STAGES if s in stages]  # pipeline order
    for info in stages.values():
        assert info["seconds"] >= 0 and info["cpu_seconds"] >= 0 and info["calls"] >= 1
    assert sum(info["seconds"] for info in stages.values()) <= result.seconds["total"]
    assert result.seconds["calibration"] <= stages["calibrate"]["seconds"]  # the stage around its own timer
    told = result.to_dict()["stages"]
    assert list(told) == list(stages) and all(set(told[s]) == set(stages[s]) for s in stages)
    if peak_rss_mb() is not None:  # Linux: the high-water mark never falls along stages run once, in order
        once = [stages[s]["peak_mb"] for s in ALWAYS if stages[s]["calls"] == 1]
        assert once == sorted(once)


def test_quantize_tells_each_stage_once_in_order(cnn_path: Path, npz_dir: Path):
    result = onnxquant.quantize(cnn_path, npz_dir, onnxquant.Recipe().with_overrides(search={"enabled": False}))
    _consistent(result)
    assert "search" not in result.stages
    assert result.stages["calibrate"]["calls"] == 1


def test_with_the_search_its_trials_are_charged_to_the_stages_they_run():
    result = onnxquant.quantize(tiny_cnn(), image_samples(32))
    assert result.search is not None and result.search.get("skipped") is None
    _consistent(result)
    trials = len(result.search["trials"])
    assert "search" in result.stages
    assert result.stages["plan"]["calls"] >= trials  # each trial re-plans, and is not counted in "search" itself
    # recover's passes and the trials' scoring are told apart from the stages around them
    assert {"bias_correction", "score"} <= set(result.stages)
    assert result.stages["score"]["calls"] == sum(1 for t in result.search["trials"] if not t.get("error"))
    assert result.stages["bias_correction"]["calls"] <= result.stages["recover"]["calls"]


def test_nested_stages_are_charged_their_own_time_only():
    @timed("plan")
    def inner() -> int:
        return 1

    @timed("search")
    def outer() -> int:
        return inner() + inner()

    assert outer() == 2  # outside a clock: plain calls, nothing recorded
    with stage_clock() as clock:
        assert outer() == 2
        with stage_clock() as nested:  # a library call made inside keeps the outer clock
            assert nested is clock
    assert clock.calls == {"plan": 2, "search": 1}
    assert sum(clock.seconds.values()) <= clock.total()
    assert set(clock.breakdown()) == {"plan", "search"}
    assert isinstance(StageClock().breakdown(), dict) and not StageClock().breakdown()


def test_an_unknown_stage_name_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        timed("calibration")
