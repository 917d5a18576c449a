from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

from models.tiny import tiny_cnn
from onnxquant.errors import ModelError
from onnxquant.model_io import load_model, save_model


def test_truncated_and_garbage_files(tmp_path: Path):
    good = tiny_cnn().SerializeToString()
    for name, data in [("trunc.onnx", good[: len(good) // 3]), ("garbage.onnx", b"\x00\xffhello" * 10), ("empty.onnx", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError) as info:
            load_model(path)
        assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "nope.onnx")


def _with_external(tmp_path: Path, location: str) -> Path:
    model = tiny_cnn()
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    external_data_helper.write_external_data_tensors(model, str(tmp_path))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_folder_loads(tmp_path: Path):
    model = load_model(_with_external(tmp_path, "w.bin"))
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_folder_is_refused(tmp_path: Path, location: str):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ModelError, match="outside|unsafe"):
        load_model(_with_external(inner, location))


def test_symlink_leading_out_is_refused(tmp_path: Path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _with_external(inner, "w.bin")
    (tmp_path / "real.bin").write_bytes((inner / "w.bin").read_bytes())
    (inner / "w.bin").unlink()
    (inner / "w.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(ModelError, match="outside"):
        load_model(path)


def test_save_is_atomic_and_deterministic(tmp_path: Path):
    model = tiny_cnn()
    a = save_model(model, tmp_path / "a.onnx")
    b = save_model(model, tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]  # no temp files left


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch):
    import onnxquant.model_io as io

    def boom(model):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "serialize", boom)
    with pytest.raises(RuntimeError):
        io.save_model(tiny_cnn(), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_initializer_values_survive(tmp_path: Path):
    model = tiny_cnn()
    path = save_model(model, tmp_path / "m.onnx")
    back = load_model(path)
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
