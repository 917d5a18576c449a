"""PP-OCRv4 text recogniser (CTC over 6,625 symbols), as shipped in ``rapidocr-onnxruntime``.

Input: a text line in BGR order (rapidocr crops OpenCV's page), height 48, (x/255 - 0.5) / 0.5, NCHW; output (batch, time, symbols)
softmax scores, decoded greedily with blank 0.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 48, 320


def source_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path


def text_lines(part: str, count: int) -> list[dict[str, np.ndarray]]:
    """Rendered English text lines (license texts, DejaVu fonts), one sample each: {"x": (1, 3, 48, 320)}.
    Background and ink are drawn channel by channel independently, so reading them as RGB rather
    than rapidocr's BGR draws from the same distribution."""
    from PIL import Image, ImageDraw, ImageFont

    from calibration.sets import _sentences, license_files

    lines = _sentences(license_files())
    rng = np.random.default_rng(20 if part == "calib" else 21)
    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("DejaVuSans*.ttf"))
    samples = []
    for _ in range(count):
        text = lines[int(rng.integers(len(lines)))][: int(rng.integers(8, 26))].strip() or "text"
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), 30) if fonts else ImageFont.load_default()
        image = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(image).text((4, 6), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
        x = (np.asarray(image, np.float32) / 255.0 - 0.5) / 0.5
        samples.append({"x": x.transpose(2, 0, 1)[None].copy()})
    return samples
