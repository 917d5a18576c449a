"""Declared image pre-processing for calibrating from a folder of images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from onnxquant.errors import CalibrationDataError

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

    def with_size(self, size: tuple[int, int]) -> ImagePreprocess:
        from dataclasses import replace

        return replace(self, size=size)

    def __call__(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        if self.size is None:
            raise CalibrationDataError("image size unknown: set the preprocessing size (e.g. --image-size 224)")
        height, width = self.size
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                short = self.resize or round(min(height, width) * 256 / 224)
                scale = short / min(img.size)
                new = (max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale)))
                img = img.resize(new, Image.Resampling.BILINEAR)
                left, top = (new[0] - width) // 2, (new[1] - height) // 2
                img = img.crop((left, top, left + width, top + height))
                pixels = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise CalibrationDataError(f"{path}: not a readable image ({exc})") from exc
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None].astype(self.dtype))
