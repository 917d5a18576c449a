"""Samples for MediaPipe's face models (models/tflite_faces.py), from real photographs on the machine.

BlazeFace: views of scikit-image/scikit-learn photos (``photo_paths``), each with zero to three of
scikit-image's real LFW face crops pasted at 28-64 pixels, plus the two photos with real faces in
them (the astronaut, the cameraman) at several crops. Face mesh: LFW face crops and crops around
those two photos' faces. Calibration and held-out sets use different photos and different faces.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from calibration.foreign import lfw_faces
from calibration.photos import crops, load_rgb, photo_paths, split

# (photo, face box left, top, side in pixels) of the real faces in scikit-image's photos
_FACE_PHOTOS = {"astronaut.png": (165, 65, 115), "camera.png": (165, 105, 105)}


def _rgb(gray_or_rgb: np.ndarray) -> np.ndarray:
    pixels = np.asarray(gray_or_rgb)
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]


def _lfw_faces(part: str) -> list[np.ndarray]:
    """The 100 LFW face crops as RGB, even ones to calibrate, odd ones held out."""
    crops_, labels = lfw_faces()
    faces = [_rgb(c) for c, is_face in zip(crops_, labels) if is_face]
    return faces[0::2] if part == "calib" else faces[1::2]


def _face_photo_views(part: str, count: int, margin: float, seed: int) -> list[np.ndarray]:
    """Square crops around the real faces of the astronaut and cameraman photos, jittered."""
    rng = np.random.default_rng(seed + (0 if part == "calib" else 500))
    by_name = {p.name: p for p in photo_paths()}
    views = []
    for k in range(count):
        name = sorted(_FACE_PHOTOS)[k % len(_FACE_PHOTOS)]
        image = Image.fromarray(_rgb(load_rgb(by_name[name])))
        left, top, side = _FACE_PHOTOS[name]
        grow = side * margin * rng.uniform(0.8, 1.25)
        cx, cy = left + side / 2 + rng.uniform(-0.1, 0.1) * side, top + side / 2 + rng.uniform(-0.1, 0.1) * side
        box = tuple(int(round(v)) for v in (cx - grow / 2, cy - grow / 2, cx + grow / 2, cy + grow / 2))
        views.append(np.asarray(image.crop(box)))
    return views


def blazeface_images(part: str, count: int) -> list[np.ndarray]:
    """Photo views with pasted LFW faces, then face-photo views (a quarter of the set)."""
    calib, held = split(photo_paths())
    photos = calib if part == "calib" else held
    faces = _lfw_faces(part)
    rng = np.random.default_rng(30 if part == "calib" else 31)
    natural = count // 4
    images = []
    for k in range(count - natural):
        view = Image.fromarray(_rgb(crops(load_rgb(photos[k % len(photos)]), 128, 1 + k // len(photos), seed=k)[-1]))
        for _ in range(int(rng.integers(0, 4))):
            side = int(rng.integers(28, 65))
            face = Image.fromarray(faces[int(rng.integers(len(faces)))]).resize((side, side), Image.Resampling.BILINEAR)
            view.paste(face, (int(rng.integers(0, 128 - side + 1)), int(rng.integers(0, 128 - side + 1))))
        images.append(np.asarray(view))
    return images + _face_photo_views(part, natural, margin=3.0, seed=3)


def blazeface_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    from models import tflite_faces as m

    count = count or (32 if part == "calib" else 16)
    return [{m.BLAZEFACE_INPUT: m.blazeface_input(img)} for img in blazeface_images(part, count)]


def face_landmark_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    """LFW faces (the crops hold the face with a small margin, as MediaPipe's face ROI does) and
    crops around the photos' real faces (a quarter of the set)."""
    from models import tflite_faces as m

    count = count or (24 if part == "calib" else 12)
    natural = count // 4
    faces = _lfw_faces(part)[: count - natural]
    views = faces + _face_photo_views(part, natural, margin=1.5, seed=4)
    return [{m.LANDMARK_INPUT: m.landmark_input(v)} for v in views]
