"""Silero VAD v5/v6 (STFT Conv, Conv encoder, LSTM decoder), as shipped in ``silero-vad``.

``silero_vad.onnx`` keeps its whole network inside the branches of an ``If`` on the sample rate
(16 kHz and 8 kHz), and each LSTM inside a further ``If``: a streaming model whose weights all
sit in control-flow bodies. Each call takes one chunk (512 samples at 16 kHz, 256 at 8 kHz)
after the previous chunk's last 64 (32) samples, and the recurrent state (2, 1, 128); it returns
the speech probability and the next state.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from models import packaged

CHUNK = {16000: 512, 8000: 256}
CONTEXT = {16000: 64, 8000: 32}


def package_dir() -> Path:
    return packaged.package_dir("silero_vad", "silero-vad")  # located, not imported (its import pulls torch)


def build(out_path: Path, name: str = "silero_vad.onnx") -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_dir() / "data" / name, out_path)
    return out_path


def build_16k_op15(out_path: Path) -> Path:
    """The 16 kHz-only export (opset 15): the Convs in the main graph, each LSTM inside an If."""
    return build(out_path, "silero_vad_16k_op15.onnx")


def feeds(audio: np.ndarray, rate: int = 16000):
    """The chunks of ``audio`` as the model reads them, without the state (the caller carries it)."""
    chunk, context = CHUNK[rate], CONTEXT[rate]
    previous = np.zeros(context, np.float32)
    for start in range(0, len(audio) - chunk + 1, chunk):
        piece = audio[start:start + chunk].astype(np.float32)
        yield {"input": np.concatenate([previous, piece])[None], "sr": np.array(rate, np.int64)}
        previous = piece[-context:]


def stream(session, audio: np.ndarray, rate: int = 16000) -> tuple[np.ndarray, list[np.ndarray]]:
    """Speech probability per chunk, and the state each chunk was fed with."""
    state = np.zeros((2, 1, 128), np.float32)
    probs, states = [], []
    for feed in feeds(audio, rate):
        states.append(state)
        prob, state = session.run(None, {**feed, "state": state})
        probs.append(float(np.asarray(prob).reshape(-1)[0]))
    return np.asarray(probs), states
