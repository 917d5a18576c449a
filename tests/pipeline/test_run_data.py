"""RunData: the samples and run-time settings of one call, as one object the library applies."""
from __future__ import annotations

from pathlib import Path

import pytest

import onnxquant
from onnxquant.calibration.collector import sample_workers
from onnxquant.errors import UsageError
from onnxquant.pipeline.run_data import RunData


def test_run_data_and_the_loose_keywords_write_the_same_model(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    onnxquant.quantize(cnn_path, npz_dir, output=tmp_path / "a.onnx", agreement="top1")
    onnxquant.quantize(cnn_path, output=tmp_path / "b.onnx", run=RunData(calib_data=npz_dir, drop_by="top1"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_run_data_and_loose_keywords_together_are_refused(cnn_path: Path, npz_dir: Path):
    with pytest.raises(UsageError, match="not both"):
        onnxquant.quantize(cnn_path, npz_dir, run=RunData(calib_data=npz_dir))
    with pytest.raises(UsageError, match="agreement|drop_by"):
        onnxquant.sensitivity(cnn_path, None, agreement="top1", run=RunData(calib_data=npz_dir))


@pytest.mark.parametrize("threads", [1, 3])
def test_the_library_applies_the_threads_it_carries(cnn_path: Path, npz_dir: Path, threads: int):
    """Sessions and sample workers inside the call use ``threads``; after it, the default is back."""
    seen: list[int] = []
    before = sample_workers()
    onnxquant.calibrate(cnn_path, None, run=RunData(calib_data=npz_dir, threads=threads,
                                                     progress=lambda done, total: seen.append(sample_workers())))
    assert seen and set(seen) == {threads}
    assert sample_workers() == before


def test_the_library_applies_the_memory_budget_it_carries(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    """Under a budget, tensors are observed in groups (several passes), with the same result."""
    onnxquant.quantize(cnn_path, output=tmp_path / "a.onnx", run=RunData(calib_data=npz_dir))
    onnxquant.quantize(cnn_path, output=tmp_path / "b.onnx", run=RunData(calib_data=npz_dir, max_memory=10_000))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with pytest.raises(UsageError, match="below one sample's tensor"):
        onnxquant.quantize(cnn_path, output=tmp_path / "c.onnx", run=RunData(calib_data=npz_dir, max_memory=100))
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("field,value", [("threads", -1), ("max_memory", 0)])
def test_bad_settings_are_usage_errors(cnn_path: Path, npz_dir: Path, field: str, value: int):
    with pytest.raises(UsageError):
        onnxquant.calibrate(cnn_path, None, run=RunData(calib_data=npz_dir, **{field: value}))
