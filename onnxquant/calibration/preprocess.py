"""Declared image pre-processing for calibrating from a folder of images."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from onnxquant.errors import CalibrationDataError, UsageError

# Largest crop or resize side; and the most pixels an image file may decode to (a small file can
# claim a huge image: a decompression bomb). 64 megapixels covers any camera.
MAX_SIDE = 8192
MAX_PIXELS = 64 * 2**20

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes a model input: resize short side, centre crop, normalise, lay out.

    ``mean`` and ``std`` are in 0..255 pixel units: ``(pixel - mean) / std``. ``size`` is
    (height, width) of the crop; ``None`` takes it from the model's input shape.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None  # short side before cropping; default: crop * 256/224
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.size is not None and not all(0 < v <= MAX_SIDE for v in self.size):
            raise UsageError(f"image size must be two whole numbers in 1..{MAX_SIDE}, got {self.size}")
        if self.resize is not None and not 0 < self.resize <= MAX_SIDE:
            raise UsageError(f"image resize must be a whole number in 1..{MAX_SIDE}, got {self.resize}")
        if len(self.mean) != 3 or not all(math.isfinite(v) for v in self.mean):
            raise UsageError(f"image mean must be three finite numbers (one per channel), got {self.mean}")
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise UsageError(f"image std must be three positive numbers (one per channel), got {self.std}")
        if self.layout not in ("NCHW", "NHWC") or self.channel_order not in ("RGB", "BGR"):
            raise UsageError(f"image layout must be NCHW or NHWC and channel order RGB or BGR, "
                             f"got {self.layout!r} and {self.channel_order!r}")
        if self.dtype not in ("float32", "float16", "float64"):
            raise UsageError(f"image dtype must be float32, float16 or float64, got {self.dtype!r}")

    def with_size(self, size: tuple[int, int]) -> ImagePreprocess:
        from dataclasses import replace

        return replace(self, size=size)

    def __call__(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        if self.size is None:
            raise CalibrationDataError("image size unknown: set the preprocessing size (e.g. --image-size 224)")
        height, width = self.size
        try:
            with warnings.catch_warnings():  # PIL's bomb warning would reach stderr: it is an error here
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img_file = Image.open(path)
            with img_file as img:
                if img.size[0] * img.size[1] > MAX_PIXELS or min(img.size) < 1:
                    raise CalibrationDataError(f"{path}: the image claims {img.size[0]}x{img.size[1]} pixels; "
                                               f"at most {MAX_PIXELS // 2**20} megapixels are decoded")
                img = img.convert("RGB")
                short = self.resize or round(min(height, width) * 256 / 224)
                scale = short / min(img.size)
                new = (max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale)))
                img = img.resize(new, Image.Resampling.BILINEAR)
                left, top = (new[0] - width) // 2, (new[1] - height) // 2
                img = img.crop((left, top, left + width, top + height))
                pixels = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise CalibrationDataError(f"{path}: not a readable image ({exc})") from exc
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None].astype(self.dtype))
