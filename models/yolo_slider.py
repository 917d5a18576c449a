"""captcha-recognizer's slider-gap detector: an Ultralytics YOLO11s-seg export, as shipped in the wheel.

``captcha_recognizer/models/slider.onnx`` (40 MB, opset 19, input ``images`` (1, 3, 640, 640) RGB
in 0..1, letterboxed with grey 114) ends like every YOLOv8/YOLO11 export: the DFL (softmax over 16
bins and a 1x1 Conv with fixed weights 0..15), the anchor and stride arithmetic, then one Concat
into ``output0`` (1, 37, 8400): box ``cx, cy, w, h`` in input pixels (0..640), one sigmoid class
score (the gap, ``s``), 32 mask coefficients; ``output1`` (1, 32, 160, 160) holds the mask
prototypes. The package keeps boxes scoring 0.25 or more (NMS at IoU 0.7).

Samples: real photographs (scikit-image, scikit-learn) cut to a slider captcha's 2:1 frame, with a
puzzle-piece gap drawn into them the way slider captchas are made (the piece's area darkened,
its outline lightened, a knob on one side), at a random place.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 640
INPUT_NAME = "images"
SCORE_THRESHOLD = 0.25  # the package's
NMS_IOU = 0.7  # the package's
CAPTCHA = (320, 160)  # width, height of a slider captcha background


def package_dir() -> Path:
    from models.packaged import package_dir as find

    return find("captcha_recognizer", "captcha-recognizer")


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_dir() / "models" / "slider.onnx", out_path)
    return out_path


def _piece_mask(side: int, knob: int, rng: np.random.Generator) -> Image.Image:
    """A puzzle piece: a square with a round knob on its top or right side, as an L mask."""
    size = side + 2 * knob
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((knob, knob, knob + side, knob + side), fill=255)
    centre = knob + side // 2
    if rng.random() < 0.5:
        draw.ellipse((centre - knob, 0, centre + knob, 2 * knob), fill=255)
    else:
        draw.ellipse((side, centre - knob, side + 2 * knob, centre + knob), fill=255)
    return mask


def slider_captcha(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slider captcha background (160 x 320 RGB) cut from ``photo``, with one gap drawn in."""
    pil = Image.fromarray(photo)
    w, h = pil.size
    cw = int(min(w, 2 * h) * rng.uniform(0.6, 1.0))
    ch = cw // 2
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = pil.crop((left, top, left + cw, top + ch)).resize(CAPTCHA, Image.Resampling.BILINEAR)
    side, knob = int(rng.integers(34, 46)), 7
    mask = _piece_mask(side, knob, rng)
    x = int(rng.integers(CAPTCHA[0] // 3, CAPTCHA[0] - mask.size[0] - 4))
    y = int(rng.integers(4, CAPTCHA[1] - mask.size[1] - 4))
    arr = np.asarray(image).astype(np.float32)
    m = np.zeros(arr.shape[:2], np.float32)
    m[y:y + mask.size[1], x:x + mask.size[0]] = np.asarray(mask, np.float32) / 255
    edge = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["FIND_EDGES"]).FIND_EDGES), np.float32) / 255
    arr = arr * (1 - 0.55 * m[..., None])  # the gap: darkened
    arr = arr + (255 - arr) * 0.7 * edge[..., None]  # its outline: lightened
    return arr.clip(0, 255).astype(np.uint8)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """An RGB image (H x W x 3, uint8) as the package feeds it: letterboxed (centred, grey 114) into
    640 x 640, RGB, 0..1, NCHW."""
    h, w = rgb.shape[:2]
    r = min(SIZE / h, SIZE / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    padded = np.full((SIZE, SIZE, 3), 114, np.uint8)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    padded[top:top + nh, left:left + nw] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    """Slider captchas from the calibration or the held-out photos (``calibration.photos.split``)."""
    from calibration.photos import load_rgb, photo_paths, split

    calib, held = split(photo_paths())
    paths = calib if part == "calib" else held
    count = count or (32 if part == "calib" else 16)
    rng = np.random.default_rng(0 if part == "calib" else 1)
    return [{INPUT_NAME: preprocess(slider_captcha(load_rgb(paths[k % len(paths)]), rng))} for k in range(count)]
