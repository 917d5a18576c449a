"""Ranking layers by the noise they add, and the caps on how many get higher precision."""
from __future__ import annotations

import onnxquant
from models.tiny import conv_chain, conv_chain_samples
from onnxquant.recipe import Recipe
from onnxquant.search.sensitive import rank_by_added_noise, within_caps


def test_a_layer_left_float_adds_no_noise_and_ranks_last():
    model = conv_chain(20)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    recipe = Recipe().with_overrides(nodes={"exclude": (convs[1],)}, search={"enabled": False})
    result = onnxquant.quantize(model, conv_chain_samples(8), recipe, diagnostics=True)
    prepared = result.reference  # the float model calibration saw: the quantized model's tensor names
    samples = conv_chain_samples(4, seed=7)
    ranked = rank_by_added_noise(prepared, result.model, convs, samples)
    assert sorted(ranked) == sorted(convs)
    assert ranked[-1] == convs[1]
    assert ranked == rank_by_added_noise(prepared, result.model, convs, samples)  # deterministic


def test_caps_pass_over_a_layer_too_large_and_stop_at_the_count():
    sizes = {"a": 50, "b": 10, "c": 10, "d": 10}
    assert within_caps(["a", "b", "c", "d"], sizes, most=2, max_bytes=25) == ["b", "c"]
    assert within_caps(["a", "b", "c", "d"], sizes, most=5, max_bytes=100) == ["a", "b", "c", "d"]
    assert within_caps(["a", "b"], {}, most=1, max_bytes=0) == ["a"]  # no sizes: only the count
    assert within_caps(["a", "b"], sizes, most=0, max_bytes=100) == []
