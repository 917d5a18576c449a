"""Page CER: the edit distance on known strings, and how read lines are matched to ground truth."""
from __future__ import annotations

import numpy as np

from benchmarks.ocr_pages import Page, TextLine
from benchmarks.ocr_pipeline import ReadLine
from benchmarks.page_cer import _by_height, edit_distance, page_errors, pooled_cer


def test_edit_distance_on_known_strings():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("license", "license") == 0
    assert edit_distance("flaw", "lawn") == 2


def _truth(text: str, box: tuple[int, int, int, int], size: int = 20) -> TextLine:
    return TextLine(text, box, box[:2], "DejaVuSans.ttf", size, (0, 0, 0))


def _read(text: str, x0: float, y0: float, x1: float, y1: float) -> ReadLine:
    return ReadLine(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32), text, 0.9)


def test_split_missing_spurious_and_whitespace_lines_count_as_the_docstring_says():
    page = Page(np.zeros((200, 400, 3), np.uint8), "document", [
        _truth("the Free Software", (10, 10, 300, 30)),   # read in two pieces: no error
        _truth("Foundation", (10, 50, 200, 70)),          # one substitution
        _truth("GNU", (10, 90, 80, 110), size=14),        # not found: 3 deletions
    ])
    read = [
        _read("Software", (150), 8, 305, 33),
        _read("the Free", 6, 8, 148, 33),
        _read("Foundatlon", 6, 47, 205, 73),
        _read("xyz", 10, 150, 60, 170),                   # overlaps no line: 3 insertions
    ]
    errors = page_errors(page, read)
    assert [e for _, _, e in errors.lines] == [0, 1, 3]
    assert errors.lines[0][1] == "theFreeSoftware"
    assert errors.spurious == ["xyz"]
    assert errors.reference_chars == len("theFreeSoftware") + len("Foundation") + len("GNU")
    assert errors.errors == 7
    assert abs(errors.cer - 7 / 28) < 1e-12
    empty = page_errors(page, [])
    assert empty.cer == 1.0
    assert abs(pooled_cer([errors, empty]) - 35 / 56) < 1e-12


def test_a_read_line_goes_to_the_line_it_overlaps_most():
    page = Page(np.zeros((100, 300, 3), np.uint8), "document",
                [_truth("upper", (10, 10, 200, 30)), _truth("lower", (10, 32, 200, 52))])
    errors = page_errors(page, [_read("lower", 8, 27, 205, 55)])  # touches both, mostly the lower
    assert [e for _, _, e in errors.lines] == [5, 0]


def test_cer_by_text_height_pools_by_size_bucket():
    assert _by_height({14: [1, 10], 16: [1, 10], 20: [0, 50], 36: [5, 10]}) == [0.1, 0.0, 0.5]
