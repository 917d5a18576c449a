"""Values inside If/Loop bodies observed through extra outputs."""
from __future__ import annotations

import numpy as np

from models.tiny_control_flow import if_samples, tiny_if_network, tiny_loop_matmul
from onnxquant.calibration.collector import collect
from onnxquant.calibration.expose import expose_body_values
from tests.conftest import run


def test_if_branch_values_are_observed_only_when_their_branch_runs():
    model = tiny_if_network()
    exposed, mapping = expose_body_values(model, ["then_c2", "else_c2", "not_a_tensor"])
    assert sorted(mapping.values()) == ["else_c2", "then_c2"]
    feed = {**if_samples(1)[0], "flag": np.array(True)}
    outputs = dict(zip([o.name for o in exposed.graph.output], run(exposed, feed, optimize=False)))
    by_value = {mapping[k]: v for k, v in outputs.items() if k in mapping}
    assert by_value["then_c2"].shape == (1, 32, 24) and by_value["else_c2"].size == 0
    assert np.array_equal(outputs["y"], run(model, feed)[0])  # the model's own output is unchanged
    table = collect(model, ["then_c2", "else_c2"], if_samples(4, flags=(True,)), histograms=False)
    assert set(table.tensors) == {"then_c2"}  # the else branch never ran: nothing observed


def test_loop_state_is_observed_over_every_iteration():
    model = tiny_loop_matmul(steps=3)
    samples = [{"x": np.random.default_rng(i).normal(size=(1, 16)).astype(np.float32)} for i in range(2)]
    table = collect(model, ["h_in", "mm", "h0"], samples, histograms=False)
    assert set(table.tensors) == {"h_in", "mm", "h0"}
    assert table.tensors["mm"].count == 2 * 3 * 16  # every iteration of every sample
