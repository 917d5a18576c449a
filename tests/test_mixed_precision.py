from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxquant
from models.tiny import image_samples
from onnxquant.api import sensitivity
from onnxquant.errors import BudgetExceededError
from onnxquant.mixed_precision import Holdout, search
from tests.conftest import optimized_op_types, run

HELD = image_samples(8, seed=42)


def _mse_metric(cnn_path: Path):
    """A user metric: minus the mean squared error against the fp32 logits (higher is better)."""
    reference = [run(cnn_path, feed)[0] for feed in HELD]

    def metric(outputs: list[list[np.ndarray]]) -> float:
        return -float(np.mean([np.mean((out[0] - ref) ** 2) for out, ref in zip(outputs, reference)]))

    return metric


def test_sensitivity_ranks_every_weighted_layer(cnn_path: Path, npz_dir: Path):
    ranking = sensitivity(cnn_path, npz_dir, HELD)
    assert sorted(r.node for r in ranking) == ["conv1", "dwconv", "fc", "pwconv"]
    keys = [(r.drop, r.cosine_drop) for r in ranking]
    assert keys == sorted(keys, reverse=True)
    assert all(r.cosine_drop > 0 and 0 < r.sqnr_db < 100 for r in ranking)  # every layer alone costs something


def test_mixed_precision_meets_a_budget_with_few_float_layers(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    metric = _mse_metric(cnn_path)
    full = onnxquant.quantize(cnn_path, npz_dir)
    full_drop = -metric([run(full.model, feed) for feed in HELD])
    budget = full_drop / 3
    result = onnxquant.quantize(cnn_path, npz_dir, output=tmp_path / "mp.onnx", holdout=HELD,
                                max_drop=budget, metric=metric)
    mp = result.mixed_precision
    assert 0 < len(mp["float_layers"]) < 4
    assert mp["drop"] <= budget
    # the written model really is within budget, and the float layers really run in float
    assert -metric([run(tmp_path / "mp.onnx", feed) for feed in HELD]) <= budget
    assert optimized_op_types(result.model, tmp_path).count("QLinearConv") + ("fc" in mp["float_layers"]) < 4
    assert set(mp["float_layers"]) <= set(result.recipe.nodes.exclude)


def test_budget_that_cannot_be_met_fails_loudly(cnn_path: Path, npz_dir: Path):
    """When even every ranked layer in float misses the budget (here the build ignores the
    exclusions, as if the rest of the int8 graph carried the error), the search says so."""
    full = onnxquant.quantize(cnn_path, npz_dir).model
    holdout = Holdout.from_samples(onnx.load(str(cnn_path)), HELD)
    ranking = sensitivity(cnn_path, npz_dir, HELD)
    with pytest.raises(BudgetExceededError, match="not met"):
        search(lambda excluded: full, ranking, holdout, max_drop=0.0, metric=_mse_metric(cnn_path))


def test_cli_max_drop_reports_the_float_layers(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    from click.testing import CliRunner

    from onnxquant.cli import main

    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(out), "--calib-data", str(npz_dir),
                                       "--max-drop", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert '"float_layers"' in result.output and out.exists()
    bad = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(out), "--calib-data", str(npz_dir),
                                    "--max-drop", "-1"])
    assert bad.exit_code == 2


def test_drop_by_kind_reads_each_output_by_its_own_figure():
    import numpy as np

    from onnxquant.agreement import OutputAgreement

    logits = OutputAgreement("logits")
    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    logits.add(ref, ref * 0.9 + np.array([[0.0, 1.0, 0.0]], np.float32))  # argmax flips, cosine stays high
    assert logits.score("cosine") > 0.97 and logits.score("top1") == 0.0 and logits.score("kind") == 0.0
    labels = OutputAgreement("label")
    labels.add(np.array([1, 2]), np.array([1, 3]))
    assert labels.score("cosine") == labels.score("kind") == 0.5


def _holdout_of(references: list[np.ndarray]) -> Holdout:
    """A holdout of one float output per sample, as the search builds it (no model needed)."""
    return Holdout([{"x": np.zeros(1, np.float32)} for _ in references], [[r] for r in references], ["out"], "fine")


def test_default_budget_misses_are_measured_on_the_whole_set_only():
    """A regression output whose second channel int8 destroyed misses validate's default
    worst-channel budget; the same outputs as fp32 miss nothing; a leave-one-out subset says nothing."""
    from onnxquant.mixed_precision import score_outputs

    rng = np.random.default_rng(0)
    references = [rng.standard_normal((1, 16, 2)).astype(np.float32) * np.array([100.0, 0.1], np.float32)
                  for _ in range(8)]
    held = _holdout_of(references)
    assert score_outputs([[r] for r in references], held).misses == ()
    broken = [[r * np.array([1.0, 0.0], np.float32) + rng.standard_normal(r.shape).astype(np.float32)
               * np.array([0.0, 0.1], np.float32)] for r in references]
    misses = score_outputs(broken, held).misses
    assert misses and all(m.startswith("out: ") for m in misses)
    assert any("channel cosine min" in m and "< 0.8 (default)" in m for m in misses)
    assert score_outputs(broken, held, samples=range(7)).misses == ()


def test_a_user_metric_that_drops_more_than_the_default_is_a_miss():
    from onnxquant.mixed_precision import score_outputs

    references = [np.full((1, 4), 1.0, np.float32) for _ in range(4)]
    held = _holdout_of(references)

    def metric(outputs: list[list[np.ndarray]]) -> float:
        return float(np.mean([out[0].mean() for out in outputs]))

    assert score_outputs([[r * 0.99] for r in references], held, metric).misses == ()
    assert score_outputs([[r * 0.9] for r in references], held, metric).misses == (
        "metric drop 0.1 > 0.02 (default)",)
    assert score_outputs([[r * np.nan] for r in references], held, metric).misses == (
        "metric drop nan > 0.02 (default)",)


def test_a_yes_no_output_breaks_ties_by_how_far_its_probabilities_moved():
    """Halving every probability keeps each decision and a pooled cosine of 1.0 but moves a
    probability by 0.2 (over the default 0.1): it ranks below small noise, and NaN below both."""
    from onnxquant.mixed_precision import score_outputs

    refs = [np.array([[r]], np.float32) for r in (0.1, 0.2, 0.3, 0.4, 0.05, 0.15)]
    held = Holdout([{"x": np.zeros(1, np.float32)} for _ in refs], [[r] for r in refs], ["out"], "fine",
                   {"out": "binary"})
    half = score_outputs([[r * 0.5] for r in refs], held)
    noisy = score_outputs([[r + (0.01 if i % 2 else -0.01)] for i, r in enumerate(refs)], held)
    nan = score_outputs([[r * np.nan] for r in refs], held)
    assert half.drop == noisy.drop == 0.0
    assert noisy.cosine_drop == pytest.approx(0.01, abs=1e-6)
    assert half.cosine_drop == pytest.approx(1.1, abs=1e-6)  # the mean change, plus 1 for the failed budget
    assert nan.drop == 1.0 and nan.cosine_drop == 3.0  # the floor: a finite figure for the trial table
    assert sorted([(half.drop, half.cosine_drop, "half"), (noisy.drop, noisy.cosine_drop, "noisy"),
                   (nan.drop, nan.cosine_drop, "nan")])[0][2] == "noisy"
    assert score_outputs([[r * 0.5] for r in refs], held).cosine_drop == half.cosine_drop  # deterministic
