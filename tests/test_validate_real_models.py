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
    from calibration.foreign import sklearn_mlp_samples
    from models import sklearn_mlp

    root = tmp_path_factory.mktemp("digits")
    model = sklearn_mlp.build_with_zipmap(root / "digits.onnx")
    calib = write_npz(root / "calib", sklearn_mlp_samples("calib"))
    hold = write_npz(root / "hold", sklearn_mlp_samples("holdout"))
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
    from calibration.foreign import magika_samples
    from models import magika_types

    root = tmp_path_factory.mktemp("magika")
    model = magika_types.build(root / "magika.onnx")
    calib = write_npz(root / "calib", magika_samples("calib")[:64])
    hold = write_npz(root / "hold", magika_samples("holdout")[:64])
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


@pytest.fixture(scope="module")
def character_detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ddddocr's YOLOX-style detector (raw heads), int8 from 8 calibration images (no search: time)."""
    pytest.importorskip("ddddocr")
    from calibration.detection import ddddocr_det_samples
    from models import ddddocr_det

    root = tmp_path_factory.mktemp("ddddocr_det")
    model = ddddocr_det.build(root / "det.onnx")
    calib = write_npz(root / "calib", ddddocr_det_samples("calib", 8))
    hold = write_npz(root / "hold", ddddocr_det_samples("holdout", 6))
    quantize(model, calib, Recipe().with_overrides(search={"enabled": False}), output=root / "int8.onnx")
    return {"model": model, "hold": hold, "int8": root / "int8.onnx"}


def test_raw_yolox_heads_decode_as_the_package_does_and_int8_keeps_its_detections(character_detector: dict[str, Path]):
    import numpy as np
    import onnxruntime as ort

    from models import ddddocr_det
    from onnxquant.agreement import DetectionSettings, find_raw_heads

    session = ort.InferenceSession(str(character_detector["model"]))
    with np.load(sorted(character_detector["hold"].glob("*.npz"))[0]) as data:
        feed = {k: data[k] for k in data.files}
    (output,) = session.run(None, feed)
    heads = find_raw_heads({"output": output}, feed)
    assert heads is not None and heads.style == "yolox" and [lv.stride for lv in heads.levels] == [8, 16, 32]
    (ours,) = heads.decode({"output": output}, DetectionSettings(score_threshold=ddddocr_det.SCORE_THRESHOLD,
                                                                nms_iou=ddddocr_det.NMS_IOU))
    boxes, scores = ddddocr_det.decode(output[0])  # the package's post-processing
    assert len(boxes) > 3 and np.allclose(np.sort(ours.scores)[::-1], scores)
    assert np.allclose(ours.boxes[np.argsort(-ours.scores, kind="stable")], boxes, atol=1e-6)

    report = validate(character_detector["model"], character_detector["int8"], character_detector["hold"], latency_runs=1)
    out = _agreement(report)["output"]
    assert out["kind"] == "detection" and out["raw_heads"]["style"] == "yolox" and out["detections_fp32"] > 20
    assert report.passed, report.failures
