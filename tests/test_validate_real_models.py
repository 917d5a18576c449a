"""Default budgets on real models: healthy int8 passes, broken int8 fails, with no budget flags.

Models: a scikit-learn digit classifier (label + ZipMap outputs), PP-OCRv4's CTC recogniser,
and a small YOLO-style detector trained here (no package ships YOLO weights). Broken variants:
absurd calibration (activations clipped at the 50.5th percentile), and the detector with its
class-score head collapsed.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from onnxquant.api import quantize
from onnxquant.recipe import Recipe
from onnxquant.validate import validate
from tests.conftest import write_npz

pytestmark = pytest.mark.realmodel

ABSURD = Recipe().with_overrides(calibration={"method": "percentile", "percentile": 50.5},
                                 recovery={"bias_correction": False})


def _agreement(report) -> dict:
    return report.to_dict()["providers"][0]["agreement"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("skl2onnx")
    from models import sklearn_digits

    root = tmp_path_factory.mktemp("digits")
    model = sklearn_digits.build(root / "digits.onnx")
    calib = write_npz(root / "calib", sklearn_digits.samples("calib"))
    hold = write_npz(root / "hold", sklearn_digits.samples("holdout"))
    quantize(model, calib, output=root / "good.onnx")
    quantize(model, calib, ABSURD, output=root / "broken.onnx")
    return {"model": model, "hold": hold, "good": root / "good.onnx", "broken": root / "broken.onnx"}


def test_sklearn_classifier_with_label_and_zipmap_passes_by_default(digits: dict[str, Path]):
    report = validate(digits["model"], digits["good"], digits["hold"], latency_runs=1)
    agreement = _agreement(report)
    assert report.passed, report.failures
    assert {a["kind"] for a in agreement.values()} == {"labels"}
    assert agreement["output_label"]["label_agreement"] >= 0.9
    assert set(agreement["output_probability"]["per_key"]) == {str(k) for k in range(10)}
    assert all(c["source"] == "default" and c["passed"] for a in agreement.values() for c in a["checks"])


def test_sklearn_classifier_broken_fails_by_default(digits: dict[str, Path]):
    report = validate(digits["model"], digits["broken"], digits["hold"], latency_runs=1)
    assert not report.passed
    assert _agreement(report)["output_label"]["label_agreement"] < 0.6


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("rapidocr_onnxruntime")
    from models import ppocr_rec

    root = tmp_path_factory.mktemp("rec")
    model = ppocr_rec.build(root / "rec.onnx")
    calib = write_npz(root / "calib", ppocr_rec.text_lines("calib", 16))
    hold = write_npz(root / "hold", ppocr_rec.text_lines("holdout", 24))
    quantize(model, calib, output=root / "good.onnx")
    quantize(model, calib, ABSURD, output=root / "broken.onnx")
    return {"model": model, "hold": hold, "good": root / "good.onnx", "broken": root / "broken.onnx"}


def test_ctc_recogniser_reports_string_agreement_and_passes(recogniser: dict[str, Path]):
    report = validate(recogniser["model"], recogniser["good"], recogniser["hold"], latency_runs=1)
    (out,) = _agreement(report).values()
    assert out["kind"] == "sequence" and out["strings"] == 24
    assert 0.0 <= out["string_agreement"] <= 1.0 and out["cer"] < 0.05
    assert report.passed, report.failures


def test_ctc_recogniser_broken_fails(recogniser: dict[str, Path]):
    report = validate(recogniser["model"], recogniser["broken"], recogniser["hold"], latency_runs=1)
    (out,) = _agreement(report).values()
    assert not report.passed and out["cer"] > 0.05


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    from models import tiny_yolo

    root = tmp_path_factory.mktemp("yolo")
    model = tiny_yolo.build(root / "yolo.onnx")
    collapsed = tiny_yolo.collapse_scores(model, root / "collapsed.onnx")
    calib = write_npz(root / "calib", tiny_yolo.samples("calib"))
    hold = write_npz(root / "hold", tiny_yolo.samples("holdout"))
    quantize(model, calib, output=root / "good.onnx")
    quantize(collapsed, calib, output=root / "collapsed.int8.onnx")
    return {"model": model, "hold": hold, "good": root / "good.onnx", "collapsed": root / "collapsed.int8.onnx"}


def test_detector_int8_passes_by_default(detector: dict[str, Path]):
    report = validate(detector["model"], detector["good"], detector["hold"], latency_runs=1)
    out = _agreement(report)["output0"]
    assert out["kind"] == "detection" and out["detections_fp32"] > 0
    assert report.passed, report.failures


def test_detector_with_collapsed_scores_fails_while_its_cosine_stays_high(detector: dict[str, Path]):
    report = validate(detector["model"], detector["collapsed"], detector["hold"], latency_runs=1)
    out = _agreement(report)["output0"]
    assert out["cosine"] > 0.99 and out["detections"] == 0 and out["f1"] == 0.0
    assert not report.passed and any("f1" in f for f in report.failures)


@pytest.fixture(scope="module")
def file_types(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("magika")
    from models import magika_model

    root = tmp_path_factory.mktemp("magika")
    model = magika_model.build(root / "magika.onnx")
    calib = write_npz(root / "calib", magika_model.samples("calib", 64))
    hold = write_npz(root / "hold", magika_model.samples("holdout", 64))
    quantize(model, calib, output=root / "good.onnx")
    # Destroyed the same way on every CPU. (onnxruntime's quantize_static also wrecks this model
    # on CPUs without VNNI, top-1 0.25, but that depends on the CPU: see the README.)
    quantize(model, calib, ABSURD, output=root / "broken.onnx")
    return {"model": model, "hold": hold, "good": root / "good.onnx", "broken": root / "broken.onnx"}


def test_file_type_classifier_int8_passes_and_a_destroyed_one_fails(file_types: dict[str, Path]):
    good = validate(file_types["model"], file_types["good"], file_types["hold"], latency_runs=1)
    out = _agreement(good)["target_label"]
    assert out["kind"] == "classification" and good.passed, good.failures
    broken = validate(file_types["model"], file_types["broken"], file_types["hold"], latency_runs=1)
    out = _agreement(broken)["target_label"]
    assert out["top1"] < 0.5 and not broken.passed and any("top1" in f for f in broken.failures)
