from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.tiny import tiny_mbconv
from tests.conftest import write_npz


def mbconv_samples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture
def mbconv_path(tmp_path: Path) -> Path:
    path = tmp_path / "mbconv.onnx"
    onnx.save(tiny_mbconv(), str(path))
    return path


@pytest.fixture
def mbconv_data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "mbconv_calib", mbconv_samples(16))
