from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxquant
from onnxquant.errors import UsageError
from onnxquant.recipe import PruneSettings, Recipe
from tests.conftest import run
from tests.prune.conftest import mbconv_samples


def _recipe(**prune) -> Recipe:
    return Recipe().with_overrides(prune=prune)


def _weight(model: onnx.ModelProto, node: str) -> np.ndarray:
    """A layer's weight by node name (folding BatchNorm renames the head's weight)."""
    name = next(n.input[1] for n in model.graph.node if n.name == node)
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _error(model: onnx.ModelProto, reference: onnx.ModelProto) -> float:
    samples = mbconv_samples(8, seed=5)
    ref = np.concatenate([run(reference, s)[0] for s in samples])
    got = np.concatenate([run(model, s)[0] for s in samples])
    return float(np.mean((ref - got) ** 2) / np.mean(ref ** 2))


def test_prune_reaches_the_sparsity_in_every_layer_and_writes_a_loadable_model(mbconv_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    result = onnxquant.prune(mbconv_path, recipe=_recipe(sparsity=0.5, remove_dead=False), output=out)
    assert {layer.node: layer.sparsity for layer in result.report.layers} == {
        "expand": 0.5, "project": 0.5, "head": 0.5, "fc": 0.5}
    loaded = onnx.load(str(out))
    weights = [numpy_helper.to_array(i) for i in loaded.graph.initializer if i.dims and np.prod(i.dims) >= 40]
    assert sum(int(np.sum(w == 0)) for w in weights) >= 0.5 * (64 + 64 + 288 + 40)  # BatchNorm is folded: names change
    run(loaded, mbconv_samples(1)[0])
    assert onnx.load(str(mbconv_path)).SerializeToString() == onnx.load(str(mbconv_path)).SerializeToString()


def test_reconstruction_refits_kept_weights_to_the_data(mbconv_path, mbconv_data):
    original = onnx.load(str(mbconv_path))
    plain = onnxquant.prune(mbconv_path, mbconv_data, _recipe(sparsity=0.5, reconstruct=False, remove_dead=False))
    refit = onnxquant.prune(mbconv_path, mbconv_data, _recipe(sparsity=0.5, remove_dead=False))
    assert any("reconstruction: 4 layers" in n for n in refit.report.notes)
    assert [layer.sparsity for layer in refit.report.layers] == [layer.sparsity for layer in plain.report.layers]
    assert _error(refit.model, original) < 0.7 * _error(plain.model, original)


def test_wanda_needs_data_and_changes_the_choice(mbconv_path, mbconv_data):
    with pytest.raises(UsageError, match="calibration data"):
        onnxquant.prune(mbconv_path, recipe=_recipe(sparsity=0.5, method="wanda"))
    magnitude = onnxquant.prune(mbconv_path, mbconv_data, _recipe(sparsity=0.5, reconstruct=False, remove_dead=False))
    wanda = onnxquant.prune(mbconv_path, mbconv_data, _recipe(sparsity=0.5, method="wanda", reconstruct=False,
                                                             remove_dead=False))
    assert any(not np.array_equal(_weight(magnitude.model, n) == 0, _weight(wanda.model, n) == 0)
               for n in ("expand", "head", "fc"))


def test_two_four_pattern(mbconv_path):
    result = onnxquant.prune(mbconv_path, recipe=_recipe(pattern="2:4", remove_dead=False))
    groups = np.moveaxis(_weight(result.model, "head"), 1, -1).reshape(-1, 4)
    assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    fc_groups = _weight(result.model, "fc").reshape(-1, 4)  # Gemm transB: (out, in), input along axis 1
    assert np.all(np.count_nonzero(fc_groups, axis=1) <= 2)


def test_channel_pruning_gives_a_smaller_dense_model_that_runs(mbconv_path, mbconv_data):
    result = onnxquant.prune(mbconv_path, mbconv_data, _recipe(channels=0.5, channel_multiple=4))
    assert result.report.structured.channels_removed == 8 + 4  # half of expand's 16, half of head's 8
    sizes = {node: _weight(result.model, node).shape[0] for node in ("expand", "depthwise", "head")}
    assert sizes == {"expand": 8, "depthwise": 8, "head": 4}
    assert run(result.model, mbconv_samples(1)[0])[0].shape == (1, 5)


def test_channel_counts_stay_multiples_for_fast_kernels(mbconv_path, mbconv_data):
    result = onnxquant.prune(mbconv_path, mbconv_data, _recipe(channels=0.3))  # default multiple 16
    assert result.report.structured.channels_removed == 0  # 16 - 4 would leave 12 channels
    result = onnxquant.prune(mbconv_path, mbconv_data, _recipe(channels=0.5, channel_multiple=8))  # head: 8 - 4 = 4
    assert _weight(result.model, "expand").shape[0] == 8 and _weight(result.model, "head").shape[0] == 8


def test_max_drop_picks_the_largest_sparsity_within_budget(mbconv_path, mbconv_data):
    result = onnxquant.prune(mbconv_path, mbconv_data, _recipe(max_drop=0.02))
    search = result.report.search
    assert search["drop"] <= 0.02
    failing = [t["amount"] for t in search["trials"] if t["drop"] > 0.02]
    passing = [t["amount"] for t in search["trials"] if t["drop"] <= 0.02]
    assert search["amount"] == max(passing, default=0.0)
    assert all(a > search["amount"] for a in failing)
    assert failing and min(failing) - search["amount"] <= 0.05 + 1e-9  # the boundary was found


def test_sparse_storage_is_smaller_and_onnxruntime_runs_it(mbconv_path):
    dense = onnxquant.prune(mbconv_path, recipe=_recipe(sparsity=0.9, remove_dead=False))
    sparse = onnxquant.prune(mbconv_path, recipe=_recipe(sparsity=0.9, remove_dead=False, sparse_storage=True))
    assert sparse.sparse_initializers > 0 and sparse.size_after < dense.size_after
    sample = mbconv_samples(1)[0]
    np.testing.assert_allclose(run(sparse.model, sample)[0], run(dense.model, sample)[0], rtol=1e-5, atol=1e-6)


def test_same_input_same_bytes(mbconv_path, mbconv_data, tmp_path):
    recipe = _recipe(sparsity=0.4, channels=0.25, method="wanda")
    a = onnxquant.prune(mbconv_path, mbconv_data, recipe, tmp_path / "a.onnx")
    b = onnxquant.prune(mbconv_path, mbconv_data, recipe, tmp_path / "b.onnx")
    assert Path(a.output_path).read_bytes() == Path(b.output_path).read_bytes()


def test_quantize_with_a_prune_step_keeps_the_zeros_in_int8(mbconv_path, mbconv_data):
    plain = onnxquant.quantize(mbconv_path, mbconv_data)
    pruned = onnxquant.quantize(mbconv_path, mbconv_data, _recipe(sparsity=0.5))
    ints = [numpy_helper.to_array(i) for i in pruned.model.graph.initializer if i.data_type == onnx.TensorProto.INT8
            and np.prod(i.dims) >= 40 and np.prod(i.dims) != 144]  # the depthwise weight is not pruned
    assert len(ints) == 4 and sum(int(np.sum(a == 0)) for a in ints) >= 0.5 * sum(a.size for a in ints)
    assert pruned.size_compressed < plain.size_compressed
    assert pruned.to_dict()["pruning"]["sparsity"] >= 0.5
    assert any(n.startswith("pruning: ") for n in pruned.notes)


@pytest.mark.parametrize("settings,message", [
    ({"sparsity": 0.5, "threshold": 0.1}, "one of sparsity, threshold and pattern"),
    ({"pattern": "4:2"}, "N:M"),
    ({"sparsity": 1.0}, r"\[0, 1\)"),
    ({"scope": "model"}, "scope"),
    ({"threshold": 0.1, "max_drop": 0.01}, "searches sparsity or channels"),
])
def test_bad_settings_are_refused_up_front(settings, message):
    with pytest.raises(UsageError, match=message):
        PruneSettings(**settings)


def test_nothing_to_prune_is_a_usage_error(mbconv_path):
    with pytest.raises(UsageError, match="nothing to prune"):
        onnxquant.prune(mbconv_path)
