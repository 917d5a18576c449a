"""Resemblyzer's speaker encoder (GE2E, "Generalized End-to-End Loss for Speaker Verification"):
three LSTM layers over 40-channel mel frames, a Linear + ReLU on the last hidden state, and an L2
normalisation, giving a 256-value voice embedding. PyTorch weights shipped in ``Resemblyzer``'s
wheel (``pretrained.pt``), exported here with ``torch.onnx.export``: ONNX LSTM ops, as a speaker
verification or diarisation front end would ship.

The input is a partial utterance: 160 frames (1.6 s) of a *power* mel spectrogram (not log) of
16 kHz audio normalised to -30 dBFS, 25 ms windows every 10 ms (librosa's defaults: Hann window,
centred frames, Slaney mel scale and area normalisation). ``mel_frames`` computes it in numpy,
so neither librosa nor webrtcvad (the package's own dependencies) is needed; the package's
module is not imported, only its weights file is read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.packaged import package_dir

RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 40
PARTIAL_FRAMES = 160
INPUT_NAME = "mels"
TARGET_DBFS = -30.0


def source_path() -> Path:
    return package_dir("resemblyzer", "Resemblyzer") / "pretrained.pt"


def build(out_path: Path) -> Path:
    import torch
    from torch import nn

    class SpeakerEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.norm(raw, dim=1, keepdim=True)

    state = torch.load(source_path(), map_location="cpu", weights_only=True)["model_state"]
    model = SpeakerEncoder().eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, PARTIAL_FRAMES, N_MELS)
    torch.onnx.export(model, (example,), str(out_path), input_names=[INPUT_NAME], output_names=["embedding"],
                      dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"}, "embedding": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return out_path


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filters() -> np.ndarray:
    """40 x 201 triangular filters, area-normalised (librosa.filters.mel(sr=16000, n_fft=400, n_mels=40))."""
    fft_hz = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """Frames x 40 power mel spectrogram of 16 kHz audio, volume-normalised as the package does
    (quiet audio raised to -30 dBFS, louder audio left as it is)."""
    audio = np.asarray(audio, np.float64)
    rms = np.sqrt(np.mean(audio**2)) + 1e-12
    audio = audio * 10 ** (max(TARGET_DBFS - 20 * np.log10(rms), 0.0) / 20)
    padded = np.pad(audio, N_FFT // 2)  # centred frames, zero padding (librosa >= 0.10)
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (count, N_FFT), (padded.strides[0] * HOP, padded.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ mel_filters().T).astype(np.float32)


def partials(mels: np.ndarray, step: int = 80) -> list[np.ndarray]:
    """1 x 160 x 40 windows every ``step`` frames (the package embeds an utterance as the mean of these)."""
    return [mels[k:k + PARTIAL_FRAMES][None] for k in range(0, len(mels) - PARTIAL_FRAMES + 1, step)]
