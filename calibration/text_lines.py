"""Text-line images for ddddocr's recogniser: captcha-like codes and words from license texts,
rendered with Debian's DejaVu fonts, some with noise strokes, a tilt or a grey background."""
from __future__ import annotations

from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_CODE_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _words() -> list[str]:
    from calibration.sets import license_files

    words = set()
    for path in license_files()[:12]:
        for word in path.read_text(encoding="utf-8", errors="ignore").split():
            word = word.strip(".,;:()[]\"'")
            if word.isalpha() and 3 <= len(word) <= 9:
                words.add(word)
    return sorted(words)


def text_lines(part: str, count: int) -> list[np.ndarray]:
    """Grayscale float32 images (64, W) in 0..1, W following the text length."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(20 if part == "calib" else 21)
    fonts = sorted(FONT_DIR.glob("*.ttf"))
    words = _words()
    out = []
    for _ in range(count):
        if rng.random() < 0.6:
            text = "".join(rng.choice(list(_CODE_CHARS), int(rng.integers(4, 8))))
        else:
            text = words[int(rng.integers(len(words)))]
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(34, 46)))
        width = int(font.getlength(text)) + int(rng.integers(12, 40))
        background = int(rng.integers(170, 256))
        img = Image.new("L", (width, 64), background)
        draw = ImageDraw.Draw(img)
        draw.text((int(rng.integers(4, 12)), int(rng.integers(2, 12))), text, font=font, fill=int(rng.integers(0, 90)))
        for _ in range(int(rng.integers(0, 3))):
            xy = [int(v) for v in (rng.integers(0, width), rng.integers(0, 64), rng.integers(0, width), rng.integers(0, 64))]
            draw.line(xy, fill=int(rng.integers(60, 160)), width=int(rng.integers(1, 3)))
        if rng.random() < 0.3:
            img = img.rotate(float(rng.uniform(-4, 4)), fillcolor=background)
        pixels = np.asarray(img, np.float32) + rng.normal(0, 6, (64, width)).astype(np.float32)
        out.append(np.clip(pixels, 0, 255) / 255.0)
    return out


def ddddocr_samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    from models.ddddocr_rec import INPUT_NAME

    count = count or (32 if part == "calib" else 64)
    return [{INPUT_NAME: img[None, None].astype(np.float32)} for img in text_lines(part, count)]
