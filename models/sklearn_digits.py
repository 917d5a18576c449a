"""A scikit-learn digit classifier (MLP on the 1,797 handwritten 8x8 digits scikit-learn ships),
converted by skl2onnx: a ``label`` (int64) and a ZipMap ``probabilities`` output (a list of
dicts in onnxruntime). Trained with a fixed seed, so the model is the same on every build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target


def build(out_path: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    x, y = _data()
    with warnings.catch_warnings():  # 300 iterations fit the training digits; more would not change the test
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x[::2], y[::2])
    onnx_model = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(onnx_model.SerializeToString())
    return out_path


def samples(part: str, count: int = 64) -> list[dict[str, np.ndarray]]:
    """Digits the classifier was not trained on: the odd rows, split into calibration and held-out."""
    x, _ = _data()
    rows = x[1::2][: 2 * count]
    picked = rows[::2] if part == "calib" else rows[1::2]
    return [{"X": row[None]} for row in picked[:count]]
