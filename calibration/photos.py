"""Real photographs bundled with installed packages (no download)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Synthetic, microscope or astronomy images are left out: they are not natural photographs.
_SKIMAGE = [
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
    "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg",
    "rocket.jpg", "text.png", "cell.png", "microaneurysms.png", "logo.png",
]


def photo_paths() -> list[Path]:
    import skimage
    import sklearn

    paths = [Path(skimage.__file__).parent / "data" / name for name in _SKIMAGE]
    paths += [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    return [p for p in paths if p.is_file()]


def split(paths: list[Path], holdout_every: int = 3) -> tuple[list[Path], list[Path]]:
    """Every ``holdout_every``-th photo is held out; the rest calibrate."""
    calib = [p for i, p in enumerate(paths) if i % holdout_every != holdout_every - 1]
    held = [p for i, p in enumerate(paths) if i % holdout_every == holdout_every - 1]
    return calib, held


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def crops(image: np.ndarray, size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` views of a photo at ``size``: a centre crop, then random scale/position/flip crops."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pil = Image.fromarray(image)
    views = []
    for k in range(count):
        short = min(pil.size)
        frac = 1.0 if k == 0 else rng.uniform(0.5, 1.0)
        side = max(8, int(short * frac))
        left = (pil.size[0] - side) // 2 if k == 0 else int(rng.integers(0, pil.size[0] - side + 1))
        top = (pil.size[1] - side) // 2 if k == 0 else int(rng.integers(0, pil.size[1] - side + 1))
        view = pil.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(view)
        if k > 0 and rng.random() < 0.5:
            arr = arr[:, ::-1]
        views.append(np.ascontiguousarray(arr))
    return views
