"""Held-out document pages with known text, for the page character error rate of a text detector.

Each page is rendered with PIL and Debian's DejaVu fonts (as calibration/sets.py ``text_images``
renders calibration pages) but keeps its ground truth: every line's string, ink box, origin, font,
size and colour. Seeds and the photos differ from calibration's. Lines never overlap, so a line's
box holds its text and nothing else. Pages are 736 x 960 (or 960 x 736): rapidocr's pre-processing
(short side to 736, sides multiples of 32) leaves them as they are, so boxes are in the
detector's own frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
PAGE_SEED = 31  # calibration's text images use 10/11, the text lines 20/21
PORTRAIT, LANDSCAPE = (736, 960), (960, 736)  # (width, height)
# Photos that show text themselves would give the detector lines without ground truth.
_PHOTOS_WITH_TEXT = {"page.png", "text.png", "logo.png"}


@dataclass(frozen=True)
class TextLine:
    text: str
    box: tuple[int, int, int, int]  # ink box (x0, y0, x1, y1), x1/y1 exclusive, as PIL's textbbox
    origin: tuple[int, int]  # where PIL drew it
    font: str  # font file name under FONT_DIR
    size: int  # font size in pixels
    fill: tuple[int, int, int]


@dataclass
class Page:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    kind: str  # "document" or "photo"
    lines: list[TextLine] = field(default_factory=list)
    background: tuple[int, int, int] | None = None  # flat background colour of a document page


def _fonts() -> list[Path]:
    # The maths font has other glyph shapes for plain letters; ExtraLight is too faint to be realistic.
    return sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "Math" not in p.name and "ExtraLight" not in p.name)


def _words() -> list[str]:
    """Printable ASCII words from the license texts, in reading order."""
    from calibration.sets import license_files

    words: list[str] = []
    for path in license_files():
        words += [w for w in path.read_text(encoding="utf-8", errors="ignore").split()
                  if w.isascii() and w.isprintable() and len(w) <= 20]
    return words


def _fill_line(words: list[str], start: int, font, width: int) -> tuple[str, int]:
    """As many words from ``start`` as fit in ``width`` pixels; returns the line and the next index."""
    line, k = "", start
    while True:
        candidate = (line + " " + words[k % len(words)]).strip()
        if line and font.getlength(candidate) > width:
            return line, k
        line, k = candidate, k + 1


def _draw(draw, lines: list[TextLine], text: str, origin: tuple[int, int], font_path: Path, size: int,
          fill: tuple[int, int, int], font) -> None:
    box = draw.textbbox(origin, text, font=font)
    draw.text(origin, text, font=font, fill=fill)
    lines.append(TextLine(text, tuple(int(v) for v in box), origin, font_path.name, size, fill))


def document_page(rng: np.random.Generator, words: list[str], fonts: list[Path]) -> Page:
    """Dark text on a light, flat background: an optional heading, then paragraphs of one size each."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = PORTRAIT if rng.random() < 0.7 else LANDSCAPE
    background = tuple(int(v) for v in rng.integers(225, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    margin = int(rng.integers(30, 90))
    y = int(rng.integers(30, 80))
    k = int(rng.integers(len(words)))
    lines: list[TextLine] = []
    heading = rng.random() < 0.6
    while True:
        size = int(rng.integers(30, 46)) if heading else int(rng.choice([14, 16, 18, 20, 24, 28]))
        font_path = fonts[int(rng.integers(len(fonts)))]
        font = ImageFont.truetype(str(font_path), size)
        fill = tuple(int(v) for v in rng.integers(0, 70, 3))
        spacing = int(size * rng.uniform(1.5, 1.9))
        for _ in range(1 if heading else int(rng.integers(2, 7))):
            if y + 2 * size > height - 20:
                return Page(np.asarray(image), "document", lines, background)
            text, k = _fill_line(words, k, font, int((width - 2 * margin) * (rng.uniform(0.4, 0.8) if heading else rng.uniform(0.75, 1.0))))
            _draw(draw, lines, text, (margin, y), font_path, size, fill, font)
            y += spacing
        y += int(rng.integers(size // 2, 2 * size))
        heading = False


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], gap: int) -> bool:
    return any(box[0] < t[2] + gap and t[0] < box[2] + gap and box[1] < t[3] + gap and t[1] < box[3] + gap
               for t in taken)


def photo_page(rng: np.random.Generator, words: list[str], fonts: list[Path], photo: Path) -> Page:
    """A held-out photo with text lines on it: some on a light label, the rest straight on the
    photo in dark or light ink, whichever contrasts with what lies under it."""
    from PIL import Image, ImageDraw, ImageFont

    from calibration.photos import load_rgb

    width, height = LANDSCAPE if rng.random() < 0.7 else PORTRAIT
    image = Image.fromarray(load_rgb(photo)).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    lines: list[TextLine] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(5, 11))):
        size = int(rng.integers(18, 49))
        font_path = fonts[int(rng.integers(len(fonts)))]
        font = ImageFont.truetype(str(font_path), size)
        k = int(rng.integers(len(words)))
        text, _ = _fill_line(words, k, font, int(rng.integers(width // 5, width * 3 // 4)))
        for _attempt in range(20):
            origin = (int(rng.integers(10, max(11, width - int(font.getlength(text)) - 10))), int(rng.integers(10, height - 2 * size)))
            box = draw.textbbox(origin, text, font=font)
            if box[2] < width - 4 and box[3] < height - 4 and not _overlaps(box, taken, size // 2 + 6):
                break
        else:
            continue
        pad = max(3, size // 5)
        label = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
        if rng.random() < 0.5:
            draw.rectangle(label, fill=tuple(int(v) for v in rng.integers(200, 256, 3)))
            fill = tuple(int(v) for v in rng.integers(0, 60, 3))
        else:
            under = np.asarray(image)[label[1]:label[3], label[0]:label[2]].astype(np.float32)
            light = under.mean() > 120
            fill = tuple(int(v) for v in (rng.integers(0, 40, 3) if light else rng.integers(225, 256, 3)))
        _draw(draw, lines, text, origin, font_path, size, fill, font)
        taken.append(label)
    return Page(np.asarray(image), "photo", lines)


def held_out_pages(count: int = 30, seed: int = PAGE_SEED) -> list[Page]:
    """``count`` pages: two of every three documents, the third a held-out photo with text."""
    from calibration.photos import photo_paths, split

    rng = np.random.default_rng(seed)
    words, fonts = _words(), _fonts()
    photos = [p for p in split(photo_paths())[1] if p.name not in _PHOTOS_WITH_TEXT]
    pages = []
    for i in range(count):
        if i % 3 == 2:
            pages.append(photo_page(rng, words, fonts, photos[(i // 3) % len(photos)]))
        else:
            pages.append(document_page(rng, words, fonts))
    return pages
