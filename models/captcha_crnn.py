"""captcha-whisperer's text recogniser: a CRNN (DenseNet-style Conv trunk, a bidirectional LSTM
unrolled over 20 time steps into Gemm + Sigmoid/Tanh cells, CTC logits) exported from PyTorch,
as shipped in ``captcha-whisperer``.

It reads 160 x 60 alphanumeric captchas, BGR pixels in 0..255 (no normalisation), and writes
``logits`` (20 time steps x batch x 37 classes, the last one the CTC blank). The unrolled LSTM
shares each weight matrix between 20 Gemm nodes: a class of export (an RNN traced step by step)
that the zoo's other recognisers (ONNX LSTM ops) do not cover. Only the package's file is read.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from models.packaged import package_dir

WIDTH, HEIGHT = 160, 60
INPUT_NAME = "image"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLANK = 36


def source_path() -> Path:
    return package_dir("captcha_whisperer", "captcha-whisperer") / "models" / "captcha_crnn.onnx"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path(), out_path)
    return out_path


def preprocess(image: Image.Image) -> np.ndarray:
    """One captcha as the network takes it: 1 x 3 x 60 x 160, BGR, 0..255."""
    rgb = np.asarray(image.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR), np.float32)
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)[None])
