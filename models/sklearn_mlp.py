"""A scikit-learn MLPClassifier on scikit-learn's bundled handwritten digits, converted by skl2onnx.

skl2onnx writes each layer as MatMul + Add of a (1, N) bias; onnxruntime's simplifier fuses that
into a Gemm whose bias keeps the (1, N) shape, which its integer-Gemm fusion does not take. The
training is deterministic (fixed seed, fixed split): the same weights on every build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN_ROWS = 1500  # digits rows 0..1499 train (and calibrate); 1500.. are held out
HIDDEN = (256, 128)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits as float32 features in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def build(out_path: Path) -> Path:
    import onnx
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=300, random_state=0).fit(x[:TRAIN_ROWS], y[:TRAIN_ROWS])
    model = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def build_partly_int8(out_path: Path) -> Path:
    """The same MLP with its first layer already quantized by onnxruntime's ``quantize_dynamic``
    (MatMulInteger): an already-compressed model with a float remainder."""
    import tempfile

    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnxquant-models-") as tmp:
        fp32 = build(Path(tmp) / "mlp.onnx")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(fp32), str(out_path), nodes_to_quantize=[_first_matmul(fp32)])
    return out_path


def _first_matmul(path: Path) -> str:
    import onnx

    return next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul")
