"""The held-out OCR pages keep exact ground truth: each line's string, font, origin and colour
reproduce the page's pixels inside its box, and nothing is drawn outside the boxes."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ocr_pages import FONT_DIR, PAGE_SEED, held_out_pages

pytest.importorskip("skimage")  # photo pages use the held-out photos scikit-image ships


@pytest.fixture(scope="module")
def pages():
    return held_out_pages(3)


def test_a_document_page_is_its_ground_truth_lines_on_a_flat_background(pages):
    from PIL import Image, ImageDraw, ImageFont

    page = pages[0]
    assert page.kind == "document" and len(page.lines) >= 5
    outside = np.ones(page.image.shape[:2], bool)
    for line in page.lines:
        x0, y0, x1, y1 = line.box
        outside[y0:y1, x0:x1] = False
        # The same string, font and colour drawn alone reproduces the box's pixels exactly.
        alone = Image.new("RGB", (page.image.shape[1], page.image.shape[0]), page.background)
        font = ImageFont.truetype(str(FONT_DIR / line.font), line.size)
        ImageDraw.Draw(alone).text(line.origin, line.text, font=font, fill=line.fill)
        assert np.array_equal(np.asarray(alone)[y0:y1, x0:x1], page.image[y0:y1, x0:x1]), line.text
        assert (page.image[y0:y1, x0:x1] != page.background).any(axis=-1).any()  # ink in every box
    assert (page.image[outside] == page.background).all()


def test_a_photo_page_has_text_lines_that_overlap_nothing_and_stay_on_the_page(pages):
    page = pages[2]
    assert page.kind == "photo" and page.lines
    height, width = page.image.shape[:2]
    boxes = [line.box for line in page.lines]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        for a0, b0, a1, b1 in boxes[i + 1:]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0
        assert all(line.text.isascii() and line.text.strip() == line.text for line in page.lines)


def test_pages_are_reproducible_and_not_the_calibration_seed():
    again = held_out_pages(1)[0]
    other = held_out_pages(1, seed=PAGE_SEED + 1)[0]
    first = held_out_pages(1)[0]
    assert np.array_equal(again.image, first.image) and again.lines == first.lines
    assert not np.array_equal(other.image, first.image)
    assert PAGE_SEED not in (10, 11)  # calibration/sets.py text_images' calibration and held-out seeds
