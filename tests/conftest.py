from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxquant
from models.tiny import image_samples, tiny_cnn


# Toy MatMul/Gemm layers this small compute in float on int8 weights by default on x86 without
# VNNI (dense_cost.py): the integer path these tests check is pinned.
INTEGER_KERNELS = onnxquant.Recipe().with_overrides(quantization={"integer_compute": True})


def run(model: onnx.ModelProto | str | Path, feed: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feed)


def optimized_op_types(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """Op types onnxruntime's CPU provider actually runs after its QDQ fusions."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    out = tmp_path / "optimized.onnx"
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(out)).graph.node]


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(), str(path))
    return path


def write_npz(folder: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """A calibration folder: one .npz per sample."""
    folder.mkdir()
    for i, sample in enumerate(samples):
        np.savez(folder / f"s{i:02d}.npz", **sample)
    return folder


@pytest.fixture
def npz_dir(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "calib", image_samples(12))


@pytest.fixture
def quantized_path(cnn_path: Path, npz_dir: Path, tmp_path: Path) -> Path:
    """The tiny CNN quantized by onnxquant (carries its recipe in metadata)."""
    from onnxquant.api import quantize

    out = tmp_path / "cnn.int8.onnx"
    quantize(cnn_path, npz_dir, output=out)
    return out


def zoo_model(name: str, work: Path) -> tuple[Path, Path, Path]:
    """A model of the zoo (``models.build``) with its calibration and held-out sample folders."""
    from calibration.build import write_samples
    from models.build import build

    model = build(name, work / "models")
    calib = write_samples(name, "calib", work / "calib" / name)
    held = write_samples(name, "holdout", work / "held" / name)
    return model, calib, held
