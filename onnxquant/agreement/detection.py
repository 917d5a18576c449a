"""Object detections: decode YOLO-style outputs, suppress overlaps, match int8 against fp32.

A YOLO-style output is one tensor per image of candidates, each ``cx, cy, w, h`` followed by
an objectness column (YOLOv5/YOLOX) or not (YOLOv8 and later), then one score per class. It
comes as (batch, candidates, columns) or (batch, columns, candidates). A boxes/scores pair
(``boxes (batch, n, 4)`` in x1,y1,x2,y2 and ``scores (batch, n, classes)``) decodes the same
way. The fp32 model's detections are the truth: the int8 model's are scored by recall,
precision and F1 at IoU >= ``match_iou`` with the same class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DetectionSettings:
    """Thresholds of the decoding, stated in every report."""

    score_threshold: float = 0.25  # class score (times objectness) a detection needs
    nms_iou: float = 0.45  # same-class boxes overlapping more than this are suppressed
    match_iou: float = 0.5  # an int8 detection matches an fp32 one of its class at this IoU
    objectness: bool | None = None  # None: from the layout (candidates first: yes, columns first: no)
    max_detections: int = 300  # per image, after NMS

    def to_dict(self) -> dict[str, object]:
        return {"score_threshold": self.score_threshold, "nms_iou": self.nms_iou, "match_iou": self.match_iou,
                "objectness": self.objectness, "max_detections": self.max_detections}


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (n, 4) x1,y1,x2,y2; scores (n,); classes (n,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def candidates_layout(shape: tuple[int, ...]) -> tuple[bool, bool]:
    """(candidates on the last axis?, objectness column expected?) for a rank-3 YOLO output.

    Exporters that put candidates last (YOLOv8/v11: (1, 84, 8400)) have no objectness column;
    those that put them first (YOLOv5/YOLOX: (1, 25200, 85)) have one.
    """
    columns_first = shape[1] < shape[2]
    return columns_first, not columns_first


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), x1,y1,x2,y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indices kept by greedy per-class non-maximum suppression, best score first (stable order)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) >= limit:
            break
        rest = order[pos + 1:]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if len(rest):
            suppressed[rest[box_iou(boxes[i:i + 1], boxes[rest])[0] > iou]] = True
    return np.asarray(keep, dtype=np.int64)


def select_detections(boxes: np.ndarray, class_scores: np.ndarray, settings: DetectionSettings) -> Detections:
    classes = class_scores.argmax(axis=1) if class_scores.shape[1] else np.zeros(len(boxes), np.int64)
    scores = class_scores[np.arange(len(boxes)), classes] if class_scores.shape[1] else np.zeros(len(boxes))
    mask = scores >= settings.score_threshold
    boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
    keep = nms(boxes, scores, classes, settings.nms_iou, settings.max_detections)
    return Detections(boxes[keep], scores[keep], classes[keep])


def decode_yolo(output: np.ndarray, settings: DetectionSettings) -> list[Detections]:
    """Detections of every image in a rank-3 YOLO-style output."""
    columns_first, objectness = candidates_layout(output.shape)
    if settings.objectness is not None:
        objectness = settings.objectness
    rows = np.swapaxes(output, 1, 2) if columns_first else output
    rows = rows.astype(np.float64)
    found = []
    for image in rows:
        boxes = cxcywh_to_xyxy(image[:, :4])
        if objectness:
            class_scores = image[:, 5:] * image[:, 4:5]
        else:
            class_scores = image[:, 4:]
        found.append(select_detections(boxes, class_scores, settings))
    return found


def decode_pair(boxes: np.ndarray, scores: np.ndarray, settings: DetectionSettings) -> list[Detections]:
    """Detections from a boxes (batch, n, 4) x1,y1,x2,y2 and scores (batch, n, classes) or (batch, classes, n) pair."""
    boxes = boxes.reshape(-1, boxes.shape[-2], 4).astype(np.float64)
    scores = scores.astype(np.float64).reshape(boxes.shape[0], *scores.shape[-2:])
    if scores.shape[1] != boxes.shape[1]:
        scores = np.swapaxes(scores, 1, 2)
    return [select_detections(b, s, settings) for b, s in zip(boxes, scores)]


def matched_pairs(reference: Detections, compressed: Detections, iou: float) -> list[tuple[int, int, float]]:
    """(reference index, compressed index, IoU) of compressed detections matched one-to-one to
    reference ones of the same class at IoU >= ``iou``, greedily in the compressed detections' score order."""
    if not len(reference) or not len(compressed):
        return []
    overlaps = box_iou(compressed.boxes, reference.boxes)
    overlaps[compressed.classes[:, None] != reference.classes[None, :]] = 0.0
    taken = np.zeros(len(reference), dtype=bool)
    pairs = []
    for i in np.argsort(-compressed.scores, kind="stable"):
        row = np.where(taken, 0.0, overlaps[i])
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            pairs.append((j, int(i), float(row[j])))
    return pairs


def match(reference: Detections, compressed: Detections, iou: float) -> int:
    """True positives: compressed detections matched one-to-one to reference ones (``matched_pairs``)."""
    return len(matched_pairs(reference, compressed, iou))


@dataclass
class DetectionAgreement:
    """Running recall/precision/F1 of int8 detections against fp32 detections."""

    settings: DetectionSettings
    reference_count: int = 0
    compressed_count: int = 0
    matched: int = 0
    images: int = 0
    iou_sum: float = 0.0  # of the matched pairs
    # fp32 scores of the detections int8 lost: near the threshold, a lost box is one that sat on it
    lost_scores: list[float] = field(default_factory=list)
    # |fp32 score - int8 score| of matched detections, the whole score of lost and extra ones:
    # finer than F1 for a search on a few samples, where one box near the threshold is the whole F1
    score_gap: float = 0.0
    scored: int = 0

    def add_images(self, reference: list[Detections], compressed: list[Detections]) -> None:
        for ref, comp in zip(reference, compressed):
            self.images += 1
            self.reference_count += len(ref)
            self.compressed_count += len(comp)
            pairs = matched_pairs(ref, comp, self.settings.match_iou)
            self.matched += len(pairs)
            self.iou_sum += sum(p[2] for p in pairs)
            kept = {p[0] for p in pairs}
            lost = [float(ref.scores[j]) for j in range(len(ref)) if j not in kept]
            self.lost_scores.extend(lost)
            found = {p[1] for p in pairs}
            self.score_gap += sum(abs(float(ref.scores[j]) - float(comp.scores[i])) for j, i, _ in pairs) + sum(lost)
            self.score_gap += sum(float(comp.scores[i]) for i in range(len(comp)) if i not in found)
            self.scored += len(ref) + len(comp) - len(pairs)

    def metrics(self) -> dict[str, float | int | None]:
        recall = self.matched / self.reference_count if self.reference_count else None
        precision = self.matched / self.compressed_count if self.compressed_count else None
        if recall is None:
            f1 = None if not self.compressed_count else 0.0  # fp32 found nothing; int8 invented boxes
        else:
            p = precision or 0.0
            f1 = 2 * p * recall / (p + recall) if p + recall > 0 else 0.0
        out: dict[str, float | int | None] = {"recall": recall, "precision": precision, "f1": f1,
                                              "detections_fp32": self.reference_count,
                                              "detections": self.compressed_count}
        if self.matched:
            out["matched_iou"] = self.iou_sum / self.matched
        if self.scored:
            out["score_agreement"] = 1.0 - self.score_gap / self.scored
        if self.lost_scores:
            out["lost_score_median"] = float(np.median(self.lost_scores))
        return out
