"""Raw detection heads: the tensors a detector's ONNX ends with when its decoding runs outside.

Many exported detectors stop before their post-processing, which the application runs in numpy:

- **GFL/PicoDet** (PaddleDetection's PicoDet, NanoDet-Plus, GFL): per feature level, a class-score
  map ``(batch, cells, classes)`` after the sigmoid, and a box-distribution map ``(batch, cells,
  4 * bins)`` of logits; each side's distance is the softmax-weighted mean bin times the stride.
- **YOLOX** (and ddddocr's detector): one ``(batch, cells, 5 + classes)`` tensor, the levels laid
  end to end, rows ``x, y`` offsets in cells, ``log w, log h`` in strides, objectness and class
  scores after their sigmoids.
- **SSD anchors** (MediaPipe's BlazeFace, BlazePalm, pose detector; TF-Lite files): a regressor
  ``(batch, anchors, 4 + 2 * keypoints)`` of box centre offsets and sizes in input pixels from
  fixed-size anchors at the cell centres, and a classificator ``(batch, anchors, classes)`` of
  logits; the anchors are the levels' cells laid end to end, each cell repeated once per anchor.

- **Decoded YOLO** (YOLOv5/v7 ``(batch, anchors x cells, 5 + classes)``, YOLOv8/YOLO11
  ``(batch, 4 + classes, cells)``, a segmenter's with 32 mask coefficients after the scores): box
  centre and size already in pixels or normalized to 0..1, so a YOLOX test on value ranges alone
  would misread one in 0..1 as grid offsets. What tells them apart is the grid itself: a decoded
  output's box centres follow each cell's position (correlation above ``GRID_CORRELATION``), raw
  offsets do not. Its class scores are the columns in [0, 1] after the box (and objectness); a
  segmenter's mask coefficients that follow are left out.

Such outputs are mostly near-zero score maps and logits: their cosine or SQNR says little of the
boxes a user gets (an int8 model can lose a third of the SQNR and keep every box, or the reverse).
Found here from the output shapes and the image input's size (each level's cell count must be the
grid of a stride 4..128 on that image), they are decoded as their packages do and judged as
detections (``onnxquant.agreement.detection``).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from onnxquant.agreement.detection import (DetectionSettings, Detections, candidates_layout, cxcywh_to_xyxy,
                                          select_detections)

STRIDES = (4, 8, 16, 32, 64, 128)
YOLOX_STRIDES = ((8, 16, 32), (8, 16, 32, 64))
# anchors per cell of an SSD level: MediaPipe's SsdAnchorsCalculator puts two on each cell per layer
# of a stride (aspect ratio 1 and its interpolated scale), or one where the interpolation is off
SSD_ANCHORS_PER_CELL = (1, 2, 4, 6, 8)
SSD_MAX_LEVELS = 3
SSD_FINEST_MAX = 16  # the finest level's stride is at most this
# MediaPipe clips the classificator's logits to +-100 before the sigmoid (score_clipping_thresh)
SSD_LOGIT_CLIP = 100.0
ANCHORS = (1, 3)  # candidates per cell: anchor-free (YOLOv8, YOLOX), anchor-based (YOLOv5/v7)
GRID_CORRELATION = 0.8  # box centres this correlated with the cells' positions are decoded ones


@dataclass(frozen=True)
class Level:
    stride: int
    rows: int  # cells along the image height
    cols: int

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def centres(self, offset: float) -> np.ndarray:
        """(cells, 2) x, y of each cell in row-major order, ``offset`` cells in, in input pixels / stride."""
        ys, xs = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        return np.stack([xs.ravel() + offset, ys.ravel() + offset], axis=1).astype(np.float64)


@dataclass(frozen=True)
class RawHeads:
    """One detector's raw head outputs and how to decode them.

    ``style`` "gfl": ``scores[i]`` and ``boxes[i]`` are level ``levels[i]``'s class-score and
    box-distribution maps. "yolox": ``scores[0]`` is the one output holding every level. "ssd":
    ``scores[0]`` the classificator's logits, ``boxes[0]`` the regressor, ``anchors_per_cell[i]``
    anchors on each cell of ``levels[i]``. "decoded": ``scores[0]`` holds decoded boxes
    (``anchors`` candidates a cell), an objectness column or not, then ``classes`` class scores
    (then, in a segmenter, mask coefficients).
    """

    style: str
    scores: tuple[str, ...]
    boxes: tuple[str, ...]
    levels: tuple[Level, ...]
    image_size: tuple[int, int]
    anchors_per_cell: tuple[int, ...] = ()
    anchors: int = 1
    classes: int = 0
    objectness: bool = False

    @property
    def anchor_rows(self) -> int:
        """Rows of an SSD head: every level's cells times its anchors per cell."""
        return sum(lv.cells * n for lv, n in zip(self.levels, self.anchors_per_cell))

    @property
    def carrier(self) -> str:
        """The output under which the decoded detections are reported."""
        return self.scores[0]

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.scores + self.boxes

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"style": self.style, "outputs": list(self.outputs),
                                  "strides": [lv.stride for lv in self.levels], "image_size": list(self.image_size)}
        if self.anchors_per_cell:
            out["anchors_per_cell"] = list(self.anchors_per_cell)
        if self.style == "decoded":
            out.update(anchors=self.anchors, classes=self.classes, objectness=self.objectness)
        return out

    @property
    def candidates(self) -> int:
        return self.anchors * sum(lv.cells for lv in self.levels)

    def fits(self, values: dict[str, np.ndarray]) -> bool:
        """Whether ``values`` have this layout's cell counts (an image of another size does not)."""
        if self.style in ("yolox", "decoded"):
            x = values.get(self.scores[0])
            return isinstance(x, np.ndarray) and x.ndim == 3 and self.candidates in x.shape[1:]
        if self.style == "ssd":
            return all(isinstance(values.get(n), np.ndarray) and values[n].ndim == 3
                       and values[n].shape[1] == self.anchor_rows for n in self.outputs)
        for names in (self.scores, self.boxes):
            for name, level in zip(names, self.levels):
                x = values.get(name)
                if not isinstance(x, np.ndarray) or x.ndim != 3 or level.cells not in x.shape[1:]:
                    return False
        return True

    def decode(self, values: dict[str, np.ndarray], settings: DetectionSettings) -> list[Detections]:
        """Detections of every image in the batch, from this detector's outputs by name."""
        if self.style == "yolox":
            return _decode_yolox(values[self.scores[0]], self.levels, settings)
        if self.style == "ssd":
            return _decode_ssd(values[self.scores[0]], values[self.boxes[0]], self, settings)
        if self.style == "decoded":
            return _decode_decoded(values[self.scores[0]], self, settings)
        return _decode_gfl([values[n] for n in self.scores], [values[n] for n in self.boxes], self.levels, settings)


def _cells_first(x: np.ndarray, cells: int) -> np.ndarray:
    """(batch, cells, columns) whichever of axes 1 and 2 holds the cells (axis 1 when both do)."""
    return x if x.shape[1] == cells else np.swapaxes(x, 1, 2)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _decode_gfl(scores: list[np.ndarray], boxes: list[np.ndarray], levels: tuple[Level, ...],
                settings: DetectionSettings) -> list[Detections]:
    per_level = []
    for score, dist, level in zip(scores, boxes, levels):
        s = _cells_first(score.astype(np.float64), level.cells)
        d = _cells_first(dist.astype(np.float64), level.cells)
        bins = d.shape[2] // 4
        d = _softmax(d.reshape(d.shape[0], level.cells, 4, bins), axis=3) @ np.arange(bins, dtype=np.float64)
        centre = np.tile(level.centres(0.5), 2) * level.stride  # x, y, x, y
        per_level.append((s, centre[None] + np.array([-1.0, -1.0, 1.0, 1.0]) * d * level.stride))
    found = []
    for image in range(per_level[0][0].shape[0]):
        class_scores = np.concatenate([s[image] for s, _ in per_level])
        xyxy = np.concatenate([b[image] for _, b in per_level])
        found.append(select_detections(xyxy, class_scores, settings))
    return found


def _decode_yolox(output: np.ndarray, levels: tuple[Level, ...], settings: DetectionSettings) -> list[Detections]:
    cells = sum(lv.cells for lv in levels)
    rows = _cells_first(output.astype(np.float64), cells)
    grid = np.concatenate([lv.centres(0.0) for lv in levels])
    stride = np.concatenate([np.full((lv.cells, 1), float(lv.stride)) for lv in levels])
    found = []
    for image in rows:
        xy = (image[:, :2] + grid) * stride
        wh = np.exp(np.minimum(image[:, 2:4], 30.0)) * stride
        class_scores = image[:, 5:] * image[:, 4:5]
        found.append(select_detections(np.concatenate([xy - wh / 2, xy + wh / 2], axis=1), class_scores, settings))
    return found


def _decode_ssd(logits: np.ndarray, regressor: np.ndarray, heads: RawHeads,
                settings: DetectionSettings) -> list[Detections]:
    """MediaPipe's TensorsToDetections with fixed-size anchors: centre = anchor + offset, size as
    given (input pixels), score = sigmoid of the clipped logit."""
    anchors = np.concatenate([np.repeat(lv.centres(0.5) * lv.stride, n, axis=0)
                              for lv, n in zip(heads.levels, heads.anchors_per_cell)])
    found = []
    for raw, logit in zip(regressor.astype(np.float64), logits.astype(np.float64)):
        centre = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        scores = 1.0 / (1.0 + np.exp(-np.clip(logit, -SSD_LOGIT_CLIP, SSD_LOGIT_CLIP)))
        found.append(select_detections(np.concatenate([centre - half, centre + half], axis=1), scores, settings))
    return found


def _decode_decoded(output: np.ndarray, heads: RawHeads, settings: DetectionSettings) -> list[Detections]:
    rows = _cells_first(output.astype(np.float64), heads.candidates)
    objectness = heads.objectness if settings.objectness is None else settings.objectness
    first = 5 if objectness else 4
    found = []
    for image in rows:
        class_scores = image[:, first:first + heads.classes]
        if objectness:
            class_scores = class_scores * image[:, 4:5]
        found.append(select_detections(cxcywh_to_xyxy(image[:, :4]), class_scores, settings))
    return found


def _grid_centres(levels: tuple[Level, ...], anchors: int) -> np.ndarray:
    """(candidates, 2) x, y cell centres in pixels, in the exporters' order: level, anchor, row, column."""
    return np.concatenate([np.tile(lv.centres(0.5) * lv.stride, (anchors, 1)) for lv in levels])


def _follows_grid(rows: np.ndarray, centres: np.ndarray) -> bool:
    """Whether columns 0 and 1 of (batch, candidates, columns) ``rows`` track the cells' x and y."""
    for axis in (0, 1):
        values = rows[..., axis].astype(np.float64)
        if values.std(axis=1).min() == 0:
            return False
        if centres[:, axis].std() == 0:
            return False  # (one cell along this axis: the grid says nothing, and corrcoef is NaN)
        for image in values:
            if not np.corrcoef(image, centres[:, axis])[0, 1] >= GRID_CORRELATION:
                return False
    return True


def _unit_run(rows: np.ndarray, first: int) -> int:
    """How many columns from ``first`` on have every value in [0, 1] (class scores; a segmenter's
    mask coefficients after them do not)."""
    count = 0
    for col in range(first, rows.shape[2]):
        if not _in_unit(rows[..., col]):
            break
        count += 1
    return count


def image_sizes(feed: dict[str, np.ndarray] | None) -> list[tuple[int, int]]:
    """(height, width) the model's image input may have: its one rank-4 float input read as NCHW,
    then as NHWC. Empty when there is no such input."""
    if not feed:
        return []
    images = [v for v in feed.values() if isinstance(v, np.ndarray) and v.ndim == 4 and v.dtype.kind == "f"]
    if len(images) != 1:
        return []
    shape = images[0].shape
    return list(dict.fromkeys([(shape[2], shape[3]), (shape[1], shape[2])]))


def level_of(cells: int, size: tuple[int, int]) -> Level | None:
    """The level whose grid on an image of ``size`` has ``cells`` cells (rounding up, as padded
    convolutions do, or down)."""
    for stride in STRIDES:
        for rounding in (math.ceil, math.floor):
            rows, cols = int(rounding(size[0] / stride)), int(rounding(size[1] / stride))
            if rows * cols == cells and rows > 0 and cols > 0:
                return Level(stride, rows, cols)
    return None


def _maps(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in values.items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim == 3 and v.size and np.isfinite(v).all()}


def _in_unit(x: np.ndarray) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0)


def _level_axis(x: np.ndarray, size: tuple[int, int]) -> tuple[Level, int] | None:
    """(level, columns) of a (batch, cells, columns) map on ``size`` (PicoDet's layout, after its
    Transposes), else of a (batch, columns, cells) one."""
    for axis in (1, 2):
        level = level_of(x.shape[axis], size)
        if level is not None:
            return level, x.shape[3 - axis]
    return None


def _find_gfl(maps: dict[str, np.ndarray], size: tuple[int, int]) -> RawHeads | None:
    """Levels of two maps each: the scores (all in [0, 1]) and the distributions (logits, four
    sides of at least two bins); at least two levels, every distribution with as many bins."""
    by_cells: dict[int, list[tuple[str, Level, int]]] = {}
    for name, x in maps.items():
        found = _level_axis(x, size)
        if found is not None:
            by_cells.setdefault(found[0].cells, []).append((name, *found))
    levels = []
    for cells in sorted(by_cells, reverse=True):
        if len(by_cells[cells]) != 2:
            continue
        (a, level, a_cols), (b, _, b_cols) = by_cells[cells]
        if _in_unit(maps[b]) and not _in_unit(maps[a]):
            a, b, a_cols, b_cols = b, a, b_cols, a_cols
        if _in_unit(maps[a]) and not _in_unit(maps[b]) and b_cols % 4 == 0 and b_cols >= 8:
            levels.append((a, b, level, b_cols))
    if len(levels) < 2 or len({cols for *_, cols in levels}) > 1:
        return None
    return RawHeads("gfl", tuple(a for a, *_ in levels), tuple(b for _, b, *_ in levels),
                    tuple(lv for _, _, lv, _ in levels), size)


def _grid_layouts(x: np.ndarray, size: tuple[int, int], anchors: tuple[int, ...]):  # noqa: ANN202 - a generator
    """(levels, anchors, rows (batch, candidates, columns)) for each grid layout whose candidate count
    is one of ``x``'s axes, the other axis at least 6 columns and fewer than the candidates."""
    for strides in YOLOX_STRIDES:
        for rounding in (math.floor, math.ceil):
            levels = tuple(Level(s, int(rounding(size[0] / s)), int(rounding(size[1] / s))) for s in strides)
            for count in anchors:
                cells = count * sum(lv.cells for lv in levels)
                if cells not in x.shape[1:]:
                    continue
                rows = _cells_first(x, cells)
                if 6 <= rows.shape[2] < cells:
                    yield levels, count, rows


def _find_decoded(maps: dict[str, np.ndarray], size: tuple[int, int]) -> RawHeads | None:
    """A decoded YOLO output: box centres that follow the grid, non-negative sizes, class scores."""
    for name, x in maps.items():
        for levels, anchors, rows in _grid_layouts(x, size, ANCHORS):
            if rows[..., 2:4].min() < 0 or not _follows_grid(rows, _grid_centres(levels, anchors)):
                continue
            objectness = candidates_layout(x.shape)[1] and _in_unit(rows[..., 4])
            classes = _unit_run(rows, 5 if objectness else 4)
            if classes:
                return RawHeads("decoded", (name,), (), levels, size, anchors=anchors, classes=classes,
                                objectness=objectness)
    return None


def _find_yolox(maps: dict[str, np.ndarray], size: tuple[int, int]) -> RawHeads | None:
    for name, x in maps.items():
        for levels, _, rows in _grid_layouts(x, size, (1,)):
            # scores after sigmoids; offsets in cells and log sizes, not decoded pixel positions and
            # sizes (nor decoded ones normalized to 0..1: those follow the grid)
            if _in_unit(rows[..., 4:]) and np.abs(rows[..., :4]).max() < 12 \
                    and not _follows_grid(rows, _grid_centres(levels, 1)):
                return RawHeads("yolox", (name,), (), levels, size)
    return None


def ssd_anchor_levels(anchors: int, size: tuple[int, int]) -> tuple[tuple[Level, ...], tuple[int, ...]] | None:
    """The levels (consecutive strides from 4, 8 or 16, grids rounded up as SAME padding does) and
    anchors per cell whose anchors add up to ``anchors``, else None. MediaPipe's layouts: one
    level may have one anchor a cell; several have pairs (one per layer of the stride), never
    fewer on a coarser level. Of several, the fewest levels, the finest first stride, the fewest
    anchors: BlazeFace's 896 on 128 x 128 are strides 8/16 with 2 and 6 anchors a cell, the pose
    detector's 2254 on 224 x 224 strides 8/16/32 with 2/2/6."""
    for count in range(1, SSD_MAX_LEVELS + 1):
        for first in range(STRIDES.index(SSD_FINEST_MAX) + 1):
            levels = tuple(Level(s, math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in STRIDES[first:first + count])
            if len(levels) < count:
                continue
            fits = [c for c in itertools.product(SSD_ANCHORS_PER_CELL, repeat=count)
                    if (count == 1 or 1 not in c) and list(c) == sorted(c)
                    and sum(lv.cells * n for lv, n in zip(levels, c)) == anchors]
            if fits:
                return levels, min(fits)
    return None


def _find_ssd(maps: dict[str, np.ndarray], size: tuple[int, int]) -> RawHeads | None:
    """A regressor (4 + 2 * keypoints columns, pixel offsets: not all in [0, 1], within a few image
    sizes) and a classificator (fewer columns, logits: some negative) with as many anchor rows."""
    for box_name, box in maps.items():
        rows, columns = box.shape[1:]
        if columns < 4 or columns % 2 or _in_unit(box) or np.abs(box).max() > 4 * max(size):
            continue
        for score_name, score in maps.items():
            if score_name == box_name or score.shape[1] != rows or score.shape[2] >= columns or score.min() >= 0:
                continue
            layout = ssd_anchor_levels(rows, size)
            if layout is not None:
                return RawHeads("ssd", (score_name,), (box_name,), layout[0], size, layout[1])
    return None


def find_raw_heads(values: dict[str, np.ndarray], feed: dict[str, np.ndarray] | None,
                   kinds: dict[str, str] | None = None, like: RawHeads | None = None) -> RawHeads | None:
    """The raw detection heads among a model's fp32 output ``values`` (by name) for the sample
    ``feed``; None when none are found, or when the user gave one of them another kind than
    detection (then every map is read by its own kind); ``like``: only the same outputs in the same
    style (the heads of an earlier sample, laid on this sample's image size)."""
    kinds = kinds or {}
    maps = {k: v for k, v in _maps(values).items() if like is None or k in like.outputs}
    for size in image_sizes(feed):
        heads = _find_gfl(maps, size) or _find_decoded(maps, size) or _find_yolox(maps, size) or _find_ssd(maps, size)
        if heads is not None and (like is None or (heads.style, heads.outputs) == (like.style, like.outputs)):
            return None if any(kinds.get(n, "detection") != "detection" for n in heads.outputs) else heads
    return None
