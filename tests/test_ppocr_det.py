"""PP-OCRv4's DB text detector (rapidocr-onnxruntime): its calibration pages are fed as rapidocr
feeds the detector."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rapidocr_onnxruntime")


def test_the_samples_are_the_pages_as_rapidocr_feeds_them():
    """rapidocr's ``LoadImage`` turns a PIL page into OpenCV's BGR order before its detector's
    pre-processing (below), as PaddleOCR trained the detector; RGB samples would swap red and blue."""
    from PIL import Image
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    from rapidocr_onnxruntime.utils.load_image import LoadImage

    from calibration.sets import ppocr_samples, text_images

    size = (64, 96)  # sides a multiple of 32 and under 960: not resized
    pages = text_images("holdout", 2, size)
    ours = ppocr_samples("holdout", count=2, size=size)
    for page, sample in zip(pages, ours):
        fed = DetPreProcess(960, "max")(LoadImage()(Image.fromarray(page)))
        assert sample["x"].shape == fed.shape
        np.testing.assert_allclose(sample["x"], fed, atol=1e-5)
    assert not np.allclose(ours[0]["x"], ours[0]["x"][:, ::-1])  # the pages are not grey: order matters
