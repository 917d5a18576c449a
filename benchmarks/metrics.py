"""Agreement of a compressed model with its fp32 original, per kind of output."""
from __future__ import annotations

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classifier(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """Top-1 agreement and mean KL(fp32 || int8) of the softmax."""
    top1 = np.mean([np.array_equal(r.argmax(-1), g.argmax(-1)) for r, g in zip(ref, got)])
    kl = np.mean([np.sum(_softmax(r) * (np.log(_softmax(r) + 1e-12) - np.log(_softmax(g) + 1e-12)), -1).mean()
                  for r, g in zip(ref, got)])
    return {"top1_agreement": float(top1), "kl": float(kl)}


def probabilities(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """For models whose output already is a probability vector (a Softmax inside the graph):
    top-1 agreement and mean KL(fp32 || int8) of the probabilities themselves."""
    top1 = np.mean([np.mean(r.argmax(-1) == g.argmax(-1)) for r, g in zip(ref, got)])
    kl = np.mean([np.sum(r * (np.log(np.clip(r, 1e-12, None)) - np.log(np.clip(g, 1e-12, None))), -1).mean()
                  for r, g in ((r.astype(np.float64), g.astype(np.float64)) for r, g in zip(ref, got))])
    return {"top1_agreement": float(top1), "kl": float(kl)}


def label_sequences(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """For recognisers whose output is already the decoded label per step (ddddocr's argmax):
    the share of samples whose whole sequence is equal, and of equal steps."""
    equal = [r.shape == g.shape and np.array_equal(r, g) for r, g in zip(ref, got)]
    steps = [np.mean(r == g) if r.shape == g.shape else 0.0 for r, g in zip(ref, got)]
    return {"sequence_agreement": float(np.mean(equal)), "step_agreement": float(np.mean(steps))}


def speech_probability(ref: list[np.ndarray], got: list[np.ndarray], threshold: float = 0.5) -> dict[str, float]:
    """Voice-activity probabilities: the share of chunks with the same speech decision at
    ``threshold`` (Silero's default), and the mean absolute difference of the probabilities."""
    r = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
    g = np.concatenate([x.ravel() for x in got]).astype(np.float64)
    return {"decision_agreement": float(np.mean((r > threshold) == (g > threshold))),
            "prob_mae": float(np.mean(np.abs(r - g)))}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def embedding(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """Mean and worst cosine similarity of the embeddings."""
    cos = [_cos(r, g) for r, g in zip(ref, got)]
    return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos))}


def probability_map(ref: list[np.ndarray], got: list[np.ndarray], threshold: float = 0.3) -> dict[str, float]:
    """Text-probability maps: pixel agreement and IoU of the text mask at the detector's threshold."""
    agree = np.mean([((r > threshold) == (g > threshold)).mean() for r, g in zip(ref, got)])
    iou = np.mean([((r > threshold) & (g > threshold)).sum() / max(((r > threshold) | (g > threshold)).sum(), 1)
                   for r, g in zip(ref, got)])
    mae = np.mean([np.abs(r - g).mean() for r, g in zip(ref, got)])
    return {"mask_iou": float(iou), "pixel_agreement": float(agree), "mean_abs_error": float(mae)}


def _boxes_f1(pairs_of_images) -> dict[str, float]:
    """F1 of int8 boxes against fp32's at IoU 0.5 (one class), and the matched boxes' mean IoU, over
    (fp32, int8) ``Detections`` pairs, one per image."""
    from onnxquant.agreement.detection import matched_pairs

    matched = reference = found = 0
    iou = 0.0
    for ref, got in pairs_of_images:
        pairs = matched_pairs(ref, got, 0.5)
        matched, reference, found = matched + len(pairs), reference + len(ref), found + len(got)
        iou += sum(p[2] for p in pairs)
    recall, precision = matched / max(reference, 1), matched / max(found, 1)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"f1": f1, "recall": recall, "precision": precision, "matched_iou": iou / max(matched, 1),
            "detections_fp32": float(reference)}


def character_boxes(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """ddddocr's detector: its own post-processing on both outputs, then F1 of the int8 boxes
    against fp32's at IoU 0.5 and the matched boxes' mean IoU."""
    from models.ddddocr_det import decode
    from onnxquant.agreement.detection import Detections

    def boxes(output: np.ndarray) -> Detections:
        found, scores = decode(output)
        return Detections(found, scores, np.zeros(len(scores), np.int64))

    return _boxes_f1((boxes(r[0]), boxes(g[0])) for r, g in zip(ref, got))


def face_boxes(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict[str, float]:
    """BlazeFace (outputs regressors, classificators): MediaPipe's decoding at its 0.5 score and
    0.3 NMS overlap on both models, then F1 of the int8 faces against fp32's at IoU 0.5."""
    from models.tflite_faces import decode
    from onnxquant.agreement.detection import Detections, nms

    def faces(outputs: list[np.ndarray]) -> Detections:
        boxes, scores = decode(*outputs)
        classes = np.zeros(len(scores), np.int64)
        keep = nms(boxes, scores, classes, 0.3, 100)
        return Detections(boxes[keep], scores[keep], classes[keep])

    return _boxes_f1((faces(r), faces(g)) for r, g in zip(ref, got))


def landmarks(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """Landmark coordinates in input pixels (MediaPipe's face mesh: 468 x, y, z): mean and worst
    absolute error."""
    err = [np.abs(r.astype(np.float64) - g.astype(np.float64)) for r, g in zip(ref, got)]
    return {"mean_px_error": float(np.mean([e.mean() for e in err])), "max_px_error": float(max(e.max() for e in err))}


def slider_gap_boxes(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """captcha-recognizer's YOLO11-seg ``output0``: decoded as the package does (score 0.25, NMS at
    IoU 0.7) by onnxquant's decoded-YOLO reader, F1 of the int8 boxes against fp32's at IoU 0.5."""
    from models import yolo_slider as m
    from onnxquant.agreement.detection import DetectionAgreement, DetectionSettings
    from onnxquant.agreement.heads import find_raw_heads

    feed = {m.INPUT_NAME: np.zeros((1, 3, m.SIZE, m.SIZE), np.float32)}
    heads = find_raw_heads({"output0": ref[0]}, feed)
    if heads is None or heads.style != "decoded":
        raise ValueError("output0 is not read as a decoded YOLO output")
    agreement = DetectionAgreement(DetectionSettings(score_threshold=m.SCORE_THRESHOLD, nms_iou=m.NMS_IOU))
    for r, g in zip(ref, got):
        agreement.add_images(heads.decode({"output0": r}, agreement.settings), heads.decode({"output0": g}, agreement.settings))
    out = agreement.metrics()
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def ctc_strings(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """A CTC recogniser's (batch, time, symbols) scores: greedy-decoded strings equal to fp32's and
    the character error rate against them (blank 0, as PaddleOCR's), onnxquant's own sequence
    agreement."""
    from onnxquant.agreement.sequence import SequenceAgreement

    agreement = SequenceAgreement(blank=0)
    for r, g in zip(ref, got):
        agreement.add(r, g)
    m = agreement.metrics()
    return {"string_agreement": float(m["string_agreement"]), "cer": float(m["cer"])}
