"""Speech for the voice-activity models: sentences from license texts spoken by espeak-ng
(Debian's ``espeak-ng``), between stretches of silence, over recorded-noise-like backgrounds
(white, pink, brown) at 5..30 dB SNR. Deterministic for one espeak-ng version."""
from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

RATE = 16000
_VOICES = ("en", "en-us", "en-gb-scotland", "de", "fr", "es")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    t = np.arange(int(len(pcm) * RATE / rate)) / RATE
    return np.interp(t, np.arange(len(pcm)) / rate, pcm).astype(np.float32)


def _noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    shaped = np.fft.irfft(spectrum / (np.sqrt(f) if colour == "pink" else f), n)
    return shaped / (np.std(shaped) + 1e-12)


def clips(part: str, count: int) -> list[np.ndarray]:
    """``count`` clips of 16 kHz float32 audio, each: noise, a spoken sentence, noise."""
    from calibration.sets import _sentences, license_files

    files = license_files()
    sentences = _sentences([p for i, p in enumerate(files) if (i % 3 == 2) == (part != "calib")])
    rng = np.random.default_rng(30 if part == "calib" else 31)
    out = []
    for _ in range(count):
        text = " ".join(sentences[int(rng.integers(len(sentences)))].split()[:12])
        speech = _speak(text, _VOICES[int(rng.integers(len(_VOICES)))], int(rng.integers(130, 200)), int(rng.integers(30, 70)))
        speech *= float(rng.uniform(0.2, 0.9)) / (np.abs(speech).max() + 1e-9)
        lead, tail = (int(rng.uniform(0.3, 1.2) * RATE) for _ in range(2))
        audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
        power = float(np.mean(speech**2))
        snr_db = float(rng.uniform(5, 30))
        noise = _noise(rng, len(audio), ("white", "pink", "brown")[int(rng.integers(3))])
        out.append((audio + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32))
    return out


def silero_samples(part: str, count: int | None = None, rates: tuple[int, ...] = (16000, 8000)) -> list[dict[str, np.ndarray]]:
    """Chunks of speech clips (a third at 8 kHz) with the recurrent state the fp32 model carries there."""
    import onnxruntime as ort

    from models import silero_vad as m

    count = count or (48 if part == "calib" else 64)
    session = ort.InferenceSession(str(m.package_dir() / "data" / "silero_vad.onnx"), providers=["CPUExecutionProvider"])
    samples = []
    for i, audio in enumerate(clips(part, 8)):
        rate = 8000 if i % 3 == 2 and 8000 in rates else 16000  # the model's other branch too
        audio = audio[::2] if rate == 8000 else audio
        _, states = m.stream(session, audio, rate)
        for k, feed in enumerate(m.feeds(audio, rate)):
            if k % 6 == 0:
                samples.append({**feed, "state": states[k]})
    rng = np.random.default_rng(40 if part == "calib" else 41)
    picked = sorted(rng.choice(len(samples), size=min(count, len(samples)), replace=False))
    return [samples[i] for i in picked]
