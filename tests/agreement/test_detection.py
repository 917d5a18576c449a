from __future__ import annotations

import numpy as np
import pytest

from onnxquant.agreement import OutputAgreement
from onnxquant.agreement.detection import (
    DetectionAgreement,
    DetectionSettings,
    Detections,
    box_iou,
    decode_pair,
    decode_yolo,
    match,
    nms,
)


def _yolo(rows: list[list[float]], candidates_last: bool) -> np.ndarray:
    x = np.asarray(rows, np.float32)[None]  # (1, candidates, columns)
    return np.swapaxes(x, 1, 2).copy() if candidates_last else x


def test_iou_of_hand_made_boxes():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert box_iou(a, b) == pytest.approx(np.array([[50 / 150, 0.0]]))


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], float)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), iou=0.45, limit=10)
    assert keep.tolist() == [0, 2]  # box 1 overlaps box 0 of its class; box 2 is another class


def test_yolov8_layout_without_objectness_decodes_boxes_and_classes():
    # cx, cy, w, h, score class 0, score class 1; candidates on the last axis
    out = _yolo([[50, 50, 20, 20, 0.9, 0.1], [52, 50, 20, 20, 0.8, 0.1], [200, 200, 40, 40, 0.05, 0.7],
                 [300, 300, 10, 10, 0.1, 0.1]] + [[0, 0, 1, 1, 0, 0]] * 100, candidates_last=True)
    (found,) = decode_yolo(out, DetectionSettings())
    assert found.classes.tolist() == [0, 1] and found.boxes[0].tolist() == [40, 40, 60, 60]


def test_yolov5_layout_multiplies_class_scores_by_objectness():
    out = _yolo([[50, 50, 20, 20, 0.2, 0.9], [200, 200, 20, 20, 0.9, 0.9]] + [[0, 0, 1, 1, 0, 0]] * 100,
                candidates_last=False)
    (found,) = decode_yolo(out, DetectionSettings())
    assert len(found) == 1 and found.boxes[0].tolist() == [190, 190, 210, 210]
    (without,) = decode_yolo(out, DetectionSettings(objectness=False))  # column 4 read as a class
    assert len(without) == 2


def test_boxes_and_scores_pair():
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.1, 0.2]]], np.float32)
    (found,) = decode_pair(boxes, scores, DetectionSettings())
    assert len(found) == 1 and found.classes.tolist() == [0]


def test_matching_is_one_to_one_and_class_aware():
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0.9, 0.8]), np.array([0, 1]))
    comp = Detections(np.array([[1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float),
                      np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]))
    assert match(ref, comp, 0.5) == 1  # two int8 boxes on one fp32 box count once; the third has the wrong class


def test_collapsed_scores_give_zero_recall_while_cosine_stays_high():
    rng = np.random.default_rng(0)
    boxes = rng.random((1, 4, 2000)) * 320
    scores = np.where(rng.random((1, 3, 2000)) > 0.995, 0.9, 0.01)
    ref = np.concatenate([boxes, scores], axis=1).astype(np.float32)
    broken = ref.copy()
    broken[:, 4:] = 0.01
    a = OutputAgreement("output0")
    a.add(ref, broken)
    m = a.metrics()
    assert a.kind == "detection" and m["cosine"] > 0.99
    assert m["detections_fp32"] > 0 and m["detections"] == 0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_no_fp32_detections_leaves_f1_unmeasured():
    d = DetectionAgreement(DetectionSettings())
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    d.add_images([empty], [empty])
    assert d.metrics()["f1"] is None and d.metrics()["recall"] is None


def test_boxes_and_scores_outputs_are_paired_and_decoded_together():
    from onnxquant.agreement import detection_pairs

    rng = np.random.default_rng(3)
    xy = rng.random((1, 200, 2)) * 200
    boxes = np.concatenate([xy, xy + 10 + rng.random((1, 200, 2)) * 30], axis=2).astype(np.float32)
    scores = np.where(rng.random((1, 200, 2)) > 0.97, 0.9, 0.02).astype(np.float32)
    assert detection_pairs({"boxes": boxes, "scores": scores, "other": np.ones((1, 3), np.float32)}) == {"boxes": "scores"}
    assert detection_pairs({"boxes": boxes, "scores": scores}, {"scores": "regression"}) == {}
    pair = OutputAgreement("boxes", scores_in="scores")
    partner = OutputAgreement("scores", boxes_of="boxes")
    collapsed = np.full_like(scores, 0.02)
    pair.add(boxes, boxes, (scores, collapsed))
    partner.add(scores, collapsed)
    m = pair.metrics()
    assert pair.kind == partner.kind == "detection" and m["detections_fp32"] > 0 and m["f1"] == 0.0
    assert "f1" not in partner.metrics() and partner.to_dict()["decoded_with"] == "boxes"


def test_lost_boxes_and_matched_overlap_are_reported():
    settings = DetectionSettings()
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
                     np.array([0.9, 0.3, 0.8]), np.array([0, 0, 0]))
    comp = Detections(np.array([[0, 0, 10, 11], [40, 40, 50, 50]], float), np.array([0.9, 0.8]), np.array([0, 0]))
    agreement = DetectionAgreement(settings)
    agreement.add_images([ref], [comp])
    m = agreement.metrics()
    assert m["matched_iou"] == pytest.approx((100 / 110 + 1.0) / 2) and m["lost_score_median"] == pytest.approx(0.3)


def test_score_agreement_tells_apart_recipes_of_equal_f1():
    """Two int8 models that keep every box (F1 1): the one whose scores drift further from fp32's
    scores lower on the fine figure the search ranks by (F1 times the score agreement); a lost box
    costs its whole score."""
    fp32 = [[50, 50, 20, 20, 0.9], [150, 50, 20, 20, 0.6], [250, 50, 20, 20, 0.01]] + [[0, 0, 1, 1, 0.0]] * 97
    close = [r[:4] + [r[4] + (0.01 if r[4] > 0.5 else 0)] for r in fp32]
    drifted = [r[:4] + [r[4] - (0.2 if r[4] > 0.5 else 0)] for r in fp32]
    lost = [r[:4] + [0.1 if r[4] == 0.6 else r[4]] for r in fp32]
    scores = {}
    for name, rows in (("close", close), ("drifted", drifted), ("lost", lost)):
        out = OutputAgreement("output0")
        out.add(_yolo(fp32, True), _yolo(rows, True))
        scores[name] = (out.metrics()["f1"], out.score("kind"), out.score("fine"))
    assert scores["close"][:2] == scores["drifted"][:2] == (1.0, 1.0)
    assert scores["close"][2] == pytest.approx(0.99) and scores["drifted"][2] == pytest.approx(0.8)
    assert scores["lost"][1] == pytest.approx(2 / 3)
    assert scores["lost"][2] == pytest.approx(2 / 3 * (1 - 0.6 / 2))  # F1 times the score agreement


def test_the_search_figure_when_fp32_finds_no_box():
    """Nothing to lose: both empty scores 1 (not the output's cosine, which box pixels dominate);
    one box int8 invents at 0.26 costs its score (0.74), not the whole figure (F1 0)."""
    from onnxquant.agreement.heads import Level
    from onnxquant.agreement.output import add_outputs, output_agreements

    rng = np.random.default_rng(0)
    centres = np.concatenate([Level(s, 640 // s, 640 // s).centres(0.5) * s for s in (8, 16, 32)])
    boxes = np.concatenate([centres + rng.normal(0, 4, centres.shape), rng.uniform(5, 60, centres.shape)], 1)
    ref = np.concatenate([boxes, np.full((len(centres), 3), 0.05)], 1).T[None].astype(np.float32)
    feed = {"images": np.zeros((1, 3, 640, 640), np.float32)}
    invented = ref.copy()
    invented[0, 4, 5] = 0.26
    for got, expected in ((ref * np.float32(1.001), 1.0), (invented, 0.74)):
        agreements = output_agreements(["output0"], [ref], feed)
        add_outputs(agreements, ["output0"], [ref], [got], feed)
        assert agreements["output0"].kind == "detection"
        assert agreements["output0"].score("fine") == pytest.approx(expected, abs=1e-6)
