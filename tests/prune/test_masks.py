import numpy as np
import onnx
from onnx import helper

from models.tiny import tiny_mbconv
from onnxquant.prune.masks import (
    global_masks,
    nm_mask,
    scores,
    sparsity_mask,
    threshold_mask,
)
from onnxquant.prune.weights import PrunableWeight, prunable_weights


def test_sparsity_mask_zeroes_exactly_the_smallest_fraction():
    w = np.arange(1, 101, dtype=np.float64).reshape(10, 10) * np.where(np.arange(100) % 2, 1, -1).reshape(10, 10)
    keep = sparsity_mask(np.abs(w), 0.3)
    assert keep.sum() == 70
    assert np.abs(w[~keep]).max() < np.abs(w[keep]).min()


def test_ties_break_by_position_so_masks_are_deterministic():
    keep = sparsity_mask(np.ones((4, 4)), 0.5)
    assert keep.ravel().tolist() == [False] * 8 + [True] * 8


def test_nm_mask_keeps_n_of_every_m_along_the_input_axis():
    rng = np.random.default_rng(0)
    score = np.abs(rng.normal(size=(6, 8, 3, 3)))  # Conv (out, in, kh, kw): input axis 1
    keep = nm_mask(score, 1, 2, 4)
    groups = np.moveaxis(keep, 1, -1).reshape(-1, 4)
    assert np.all(groups.sum(axis=1) == 2)
    kept_min = np.moveaxis(np.where(keep, score, np.inf), 1, -1).reshape(-1, 4).min(axis=1)
    dropped_max = np.moveaxis(np.where(keep, -np.inf, score), 1, -1).reshape(-1, 4).max(axis=1)
    assert np.all(kept_min >= dropped_max)
    assert nm_mask(np.ones((4, 6)), 1, 2, 4) is None  # 6 inputs do not split into groups of 4


def test_global_cut_spreads_unevenly_over_layers():
    small, large = np.full((10,), 0.1), np.full((10,), 10.0)
    masks = global_masks({"a": small, "b": large}, 0.5)
    assert not masks["a"].any() and masks["b"].all()


def test_wanda_scores_weigh_weights_by_their_input_rms():
    layer = PrunableWeight("mm", "MatMul", "w", (2, 2), input_axis=0, output_axis=1)
    w = np.array([[1.0, 1.0], [2.0, 2.0]])  # row k multiplies input feature k
    score = scores(w, layer, np.array([10.0, 1.0]))
    assert np.all(score[0] > score[1])  # the small weight on the loud input ranks higher


def test_threshold_mask():
    assert threshold_mask(np.array([-0.2, 0.05, 0.1, 0.3]), 0.1).tolist() == [True, False, False, True]


def test_prunable_weights_skip_depthwise_and_shared_weights():
    model = tiny_mbconv()
    layers, skipped = prunable_weights(model)
    assert [layer.node for layer in layers] == ["expand", "project", "head", "fc"]
    assert [s.node for s in skipped] == ["depthwise"]
    with_dw, _ = prunable_weights(model, depthwise=True)
    assert "depthwise" in [layer.node for layer in with_dw]
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    shared.graph.node.append(helper.make_node("Conv", ["x", "w_expand"], ["extra"], name="twin"))
    layers, skipped = prunable_weights(shared)
    assert "expand" not in [layer.node for layer in layers]
    assert any(s.reason.startswith("weight shared") for s in skipped)
