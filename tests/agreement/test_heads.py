"""Raw detection heads: found from shapes and the image size, decoded as their packages do."""
from __future__ import annotations

import numpy as np
import pytest

from onnxquant.agreement import DetectionSettings, find_raw_heads, output_agreements
from onnxquant.agreement.heads import level_of

IMAGE = {"image": np.zeros((1, 3, 64, 64), np.float32)}


def _gfl_maps() -> dict[str, np.ndarray]:
    """Two levels (strides 8, 16) of a 64 x 64 image, 2 classes, 8 bins; one object at level 8's
    cell (row 2, col 3), class 1, distances left 2, top 1, right 3, bottom 2 bins."""
    scores8, scores16 = np.full((1, 64, 2), 0.01, np.float32), np.full((1, 16, 2), 0.01, np.float32)
    scores8[0, 2 * 8 + 3, 1] = 0.9
    rng = np.random.default_rng(0)
    dist8, dist16 = (rng.normal(0, 1, (1, cells, 32)).astype(np.float32) for cells in (64, 16))
    for side, bin_ in enumerate((2, 1, 3, 2)):
        dist8[0, 2 * 8 + 3, side * 8 + bin_] = 40.0  # softmax all but one-hot
    # outputs in PicoDet's order: the score maps of every level, then the distributions
    return {"s8": scores8, "s16": scores16, "d8": dist8, "d16": dist16}


def test_gfl_maps_are_found_and_decoded_to_the_box_they_hold():
    heads = find_raw_heads(_gfl_maps(), IMAGE)
    assert heads is not None and heads.style == "gfl"
    assert heads.scores == ("s8", "s16") and heads.boxes == ("d8", "d16")
    assert [lv.stride for lv in heads.levels] == [8, 16] and heads.carrier == "s8"
    (found,) = heads.decode(_gfl_maps(), DetectionSettings())
    # centre (3.5, 2.5) cells x 8 = (28, 20); sides 16, 8, 24, 16 pixels
    assert found.classes.tolist() == [1] and found.boxes[0] == pytest.approx([12, 12, 52, 36], abs=1e-6)


def test_gfl_maps_laid_out_classes_first_are_found_too():
    maps = {k: np.swapaxes(v, 1, 2).copy() for k, v in _gfl_maps().items()}
    heads = find_raw_heads(maps, IMAGE)
    assert heads is not None
    (found,) = heads.decode(maps, DetectionSettings())
    assert found.boxes[0] == pytest.approx([12, 12, 52, 36], abs=1e-6)


def _yolox_output() -> np.ndarray:
    """Strides 8, 16, 32 on 64 x 64 (64 + 16 + 4 rows); one object at level 16's cell (row 1, col 2)."""
    rows = np.tile(np.array([0.5, 0.5, -1.0, -1.0, 0.01, 0.01], np.float32), (84, 1))
    rows[64 + 1 * 4 + 2] = [0.5, 0.25, np.log(2.0), 0.0, 0.9, 0.8]
    return rows[None]


def test_yolox_rows_are_found_and_decoded_with_grid_offsets_and_log_sizes():
    heads = find_raw_heads({"output": _yolox_output()}, IMAGE)
    assert heads is not None and heads.style == "yolox" and [lv.stride for lv in heads.levels] == [8, 16, 32]
    (found,) = heads.decode({"output": _yolox_output()}, DetectionSettings())
    # centre ((2 + 0.5) x 16, (1 + 0.25) x 16) = (40, 20); size 2 x 16 by 1 x 16; score 0.9 x 0.8
    assert found.boxes[0] == pytest.approx([24, 12, 56, 28]) and found.scores[0] == pytest.approx(0.72)


def test_what_is_not_a_raw_head():
    maps = _gfl_maps()
    assert find_raw_heads(maps, None) is None  # no image size to lay the grids on
    assert find_raw_heads(maps, {"image": np.zeros((1, 3, 50, 50), np.float32)}) is None  # no grid fits
    assert find_raw_heads({"s8": maps["s8"], "d8": maps["d8"]}, IMAGE) is None  # one level is no pyramid
    decoded = _yolox_output()
    decoded[..., 2:4] = 30.0  # pixel sizes: a decoded YOLO output, read by the YOLO decoder instead
    assert find_raw_heads({"output": decoded}, IMAGE) is None
    assert find_raw_heads(maps, IMAGE, kinds={"d16": "regression"}) is None  # the user reads the maps one by one
    assert find_raw_heads(maps, IMAGE, kinds={"s8": "detection"}) is not None


def test_level_grids_round_up_or_down():
    assert (level_of(130, (100, 80)).rows, level_of(130, (100, 80)).cols) == (13, 10)  # stride 8, rounded up
    assert level_of(12 * 10, (100, 80)).stride == 8  # rounded down


def test_heads_are_judged_together_under_the_first_score_map():
    maps = _gfl_maps()
    names = list(maps)
    agreements = output_agreements(names, [maps[n] for n in names], IMAGE)
    carrier, others = agreements["s8"], [agreements[n] for n in ("s16", "d8", "d16")]
    assert carrier.heads is not None and carrier.kind == "detection" and not carrier.decoded_elsewhere
    assert all(a.head_of == "s8" and a.decoded_elsewhere for a in others)


def test_a_sample_of_another_image_size_lays_the_grids_anew():
    from onnxquant.agreement import add_outputs

    small = _gfl_maps()
    names = list(small)
    agreements = output_agreements(names, [small[n] for n in names], IMAGE)
    add_outputs(agreements, names, [small[n] for n in names], [small[n] for n in names], IMAGE)
    big = {"s8": np.full((1, 144, 2), 0.01, np.float32), "s16": np.full((1, 36, 2), 0.01, np.float32),
           "d8": np.zeros((1, 144, 32), np.float32) - 1.0, "d16": np.zeros((1, 36, 32), np.float32) - 1.0}
    big["s8"][0, 5, 0] = 0.8
    add_outputs(agreements, names, [big[n] for n in names], [big[n] for n in names],
                {"image": np.zeros((1, 3, 96, 96), np.float32)})
    m = agreements["s8"].metrics()
    assert agreements["s8"].detections.images == 2 and m["detections_fp32"] == 2 and m["f1"] == 1.0
    assert not agreements["s8"].notes


def _ssd_outputs() -> dict[str, np.ndarray]:
    """BlazeFace's layout on 128 x 128: 896 anchors (16 x 16 cells x 2, then 8 x 8 cells x 6), a
    regressor of 16 columns (box, six key points) and one logit column; one face on the second
    anchor of the stride-16 cell (row 2, col 5), offset (+4, -2) pixels, 40 x 30."""
    regressors = np.zeros((1, 896, 16), np.float32)
    logits = np.full((1, 896, 1), -6.0, np.float32)
    row = 16 * 16 * 2 + (2 * 8 + 5) * 6 + 1
    regressors[0, row, :4] = [4.0, -2.0, 40.0, 30.0]
    regressors[0, :, 4:] = np.random.default_rng(0).normal(0, 8, (896, 12))
    logits[0, row, 0] = 3.0
    return {"regressors": regressors, "classificators": logits}


def test_ssd_anchor_heads_are_found_and_decoded_as_mediapipe_does():
    image = {"input": np.zeros((1, 3, 128, 128), np.float32)}
    heads = find_raw_heads(_ssd_outputs(), image)
    assert heads is not None and heads.style == "ssd" and heads.carrier == "classificators"
    assert [lv.stride for lv in heads.levels] == [8, 16] and heads.anchors_per_cell == (2, 6)
    (found,) = heads.decode(_ssd_outputs(), DetectionSettings())
    # anchor centre (5.5, 2.5) x 16 = (88, 40), plus the offset: (92, 38); score sigmoid(3)
    assert found.boxes.tolist() == [pytest.approx([72, 23, 112, 53])]
    assert found.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    agreements = output_agreements(["regressors", "classificators"], list(_ssd_outputs().values()), image)
    assert agreements["classificators"].kind == "detection"


def test_ssd_anchor_layouts_of_mediapipe_detectors():
    from onnxquant.agreement.heads import ssd_anchor_levels

    def layout(anchors: int, side: int) -> tuple[list[int], tuple[int, ...]]:
        levels, per_cell = ssd_anchor_levels(anchors, (side, side))
        return [lv.stride for lv in levels], per_cell

    assert layout(896, 128) == ([8, 16], (2, 6))  # BlazeFace short range
    assert layout(2016, 192) == ([8, 16], (2, 6))  # BlazePalm
    assert layout(2304, 192) == ([4], (1,))  # BlazeFace full range
    assert layout(2254, 224) == ([8, 16, 32], (2, 2, 6))  # pose detector
    assert ssd_anchor_levels(897, (128, 128)) is None


def test_logits_beside_a_box_map_whose_rows_fit_no_anchors_are_no_ssd_head():
    outputs = {"boxes": np.ones((1, 100, 4), np.float32) * 5, "logits": -np.ones((1, 100, 1), np.float32)}
    assert find_raw_heads(outputs, {"input": np.zeros((1, 3, 128, 128), np.float32)}) is None
def _centres_64() -> np.ndarray:
    """(84, 2) cell centres in pixels of strides 8, 16, 32 on 64 x 64, in the exporters' order."""
    out = []
    for stride in (8, 16, 32):
        n = 64 // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        out.append(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1) * stride)
    return np.concatenate(out)


def _decoded_v8(scale: float = 1.0, masks: int = 0) -> np.ndarray:
    """A decoded YOLOv8-style output (1, 4 + 2 classes + ``masks``, 84): every candidate's box
    centred near its cell, 2 strides wide; one object, class 1, at level 16's cell (row 1, col 2)
    with a box (30, 10)..(50, 30). Coordinates times ``scale`` (1/64: normalized to 0..1); a
    segmenter's mask coefficients (not scores: beyond 0..1) after the classes."""
    rng = np.random.default_rng(0)
    centres = _centres_64() + rng.normal(0, 1.0, (84, 2))
    sizes = np.repeat([[16.0]] * 64 + [[32.0]] * 16 + [[64.0]] * 4, 2, axis=1)
    scores = np.full((84, 2), 0.01)
    coefficients = rng.normal(0, 2.0, (84, masks))
    rows = np.concatenate([centres * scale, sizes * scale, scores, coefficients], axis=1)
    rows[64 + 1 * 4 + 2, :6] = [40 * scale, 20 * scale, 20 * scale, 20 * scale, 0.1, 0.9]
    return rows.T[None].astype(np.float32)


@pytest.mark.parametrize("scale", [1.0, 1 / 64], ids=["pixels", "normalized"])
def test_decoded_yolo_output_is_read_as_boxes_not_as_yolox_offsets(scale):
    """Normalized to 0..1, a decoded output is in YOLOX's ranges (offsets under 12, scores in
    [0, 1]); its box centres follow the grid, so it is decoded as boxes."""
    output = _decoded_v8(scale)
    heads = find_raw_heads({"output0": output}, IMAGE)
    assert heads is not None and heads.style == "decoded" and heads.classes == 2 and not heads.objectness
    (found,) = heads.decode({"output0": output}, DetectionSettings())
    assert found.classes.tolist() == [1] and found.boxes[0] == pytest.approx(np.array([30, 10, 50, 30]) * scale)


def test_decoded_segmenter_output_scores_stop_before_the_mask_coefficients():
    output = _decoded_v8(masks=32)
    heads = find_raw_heads({"output0": output, "output1": np.zeros((1, 32, 16, 16), np.float32)}, IMAGE)
    assert heads is not None and heads.style == "decoded" and heads.classes == 2 and heads.outputs == ("output0",)
    (found,) = heads.decode({"output0": output}, DetectionSettings())
    assert found.boxes[0] == pytest.approx([30, 10, 50, 30])


def test_decoded_yolov5_output_with_three_anchors_and_objectness():
    v8 = _decoded_v8()[0].T  # (84, 6): cx, cy, w, h, class 0, class 1
    levels = [v8[:64], v8[64:80], v8[80:]]
    rows = np.concatenate([np.tile(lv, (3, 1)) for lv in levels])  # level, anchor, row, column
    objectness = np.full((len(rows), 1), 0.02, np.float32)
    objectness[3 * 64 + 6] = 0.95  # anchor 0 of the object's cell
    output = np.concatenate([rows[:, :4], objectness, rows[:, 4:]], axis=1)[None]
    heads = find_raw_heads({"output": output}, IMAGE)
    assert heads is not None and heads.style == "decoded" and heads.anchors == 3 and heads.objectness
    (found,) = heads.decode({"output": output}, DetectionSettings())
    assert len(found) == 1 and found.scores[0] == pytest.approx(0.95 * 0.9, rel=1e-5)


def test_one_cell_across_is_no_grid_to_follow():
    """An input 8 pixels wide leaves one cell across every level: the x centres are constant, their
    correlation NaN, and such an output (a sequence model's rows) is not read as decoded boxes."""
    import warnings

    rng = np.random.default_rng(0)
    out = np.concatenate([rng.uniform(0, 1, (80, 1)), np.arange(80)[:, None] * 8 + 4.0, rng.uniform(0, 1, (80, 4))],
                         1)[None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert find_raw_heads({"out": out}, {"x": np.zeros((1, 3, 640, 8), np.float32)}) is None
