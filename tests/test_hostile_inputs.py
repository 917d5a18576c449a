"""Hostile inputs through the command line: every one gets a documented exit code and one line
on stderr, never a traceback, a hang or a partial output file.

Models are truncated and bit-flipped at random (hypothesis), graphs are broken by hand, and
calibration folders hold wrong names, shapes, dtypes, NaN/Inf, pickles or nothing at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from models.tiny import image_samples, tiny_cnn
from onnxquant.cli import main
from tests.conftest import write_npz

# 0 success, 2 usage, 3 model, 4 calibration data, 5 self-check (README, "Exit codes").
DOCUMENTED = {0, 2, 3, 4, 5}
MODEL = tiny_cnn().SerializeToString()
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _quantize(model: Path, data: Path, out_dir: Path):
    out_dir.mkdir(exist_ok=True)
    result = CliRunner().invoke(main, ["quantize", str(model), "-o", str(out_dir / "q.onnx"), "--calib-data", str(data)])
    return result, sorted(p.name for p in out_dir.iterdir())


def _assert_clean(result, files: list[str]) -> None:
    assert result.exit_code in DOCUMENTED, (result.exit_code, result.output[-500:])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert files == ["q.onnx"]
        onnx.checker.check_model(onnx.load(str(Path(result.output.split()[1]))))
    else:
        assert files == []  # nothing half-written
        assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("hostile") / "calib", image_samples(4))


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=len(MODEL) - 1))
def test_truncated_model(tmp_path: Path, calib: Path, cut: int):
    model = tmp_path / f"cut{cut}.onnx"
    model.write_bytes(MODEL[:cut])
    result, files = _quantize(model, calib, tmp_path / f"out{cut}")
    assert result.exit_code == 3, result.output  # a cut file never passes as a model
    _assert_clean(result, files)


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, len(MODEL) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped_model(tmp_path: Path, calib: Path, flips: list[tuple[int, int]]):
    data = bytearray(MODEL)
    for index, bit in flips:
        data[index] ^= 1 << bit
    key = abs(hash(tuple(flips)))
    model = tmp_path / f"flip{key}.onnx"
    model.write_bytes(bytes(data))
    result, files = _quantize(model, calib, tmp_path / f"out{key}")
    _assert_clean(result, files)


def _broken(kind: str) -> onnx.ModelProto:
    model = tiny_cnn()
    nodes = model.graph.node
    if kind == "cycle":
        nodes[0].input[0] = nodes[-1].output[0]
    elif kind == "unsorted":
        reordered = list(nodes)[::-1]
        del nodes[:]
        nodes.extend(reordered)
    elif kind == "dangling input":
        nodes[1].input[0] = "nowhere"
    elif kind == "duplicate outputs":
        nodes[1].output[0] = nodes[0].output[0]
    elif kind == "duplicate node names":
        for node in nodes:
            node.name = "same"
    elif kind in ("NaN weight", "Inf weight"):
        weight = model.graph.initializer[0]
        values = numpy_helper.to_array(weight).copy()
        values.reshape(-1)[0] = np.nan if kind == "NaN weight" else np.inf
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    elif kind == "no graph":
        model.ClearField("graph")
    return model


@pytest.mark.parametrize("kind", ["cycle", "unsorted", "dangling input", "duplicate outputs", "duplicate node names",
                                  "NaN weight", "Inf weight", "no graph"])
def test_broken_graphs_are_model_errors(tmp_path: Path, calib: Path, kind: str):
    model = tmp_path / "broken.onnx"
    model.write_bytes(_broken(kind).SerializeToString())
    result, files = _quantize(model, calib, tmp_path / "out")
    assert result.exit_code == 3, result.output
    _assert_clean(result, files)


def _mutated(tmp_path: Path, name: str, change) -> Path:
    return write_npz(tmp_path / name, [{k: change(v) for k, v in s.items()} for s in image_samples(3)])


@pytest.mark.parametrize("kind, change, message", [
    ("nan", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), "NaN or Inf"),
    ("inf", lambda x: np.full_like(x, np.inf), "NaN or Inf"),
    ("dtype", lambda x: x.astype(np.int32), "dtype int32"),
    ("shape", lambda x: x[:, :2], "shape"),
    ("rank", lambda x: x[0], "shape"),
])
def test_bad_calibration_values(tmp_path: Path, kind: str, change, message: str):
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL)
    result, files = _quantize(model, _mutated(tmp_path, kind, change), tmp_path / "out")
    assert result.exit_code == 4 and message in result.output, result.output
    _assert_clean(result, files)


def test_bad_calibration_folders(tmp_path: Path):
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL)
    cases = {}
    cases["empty"] = tmp_path / "empty"
    cases["empty"].mkdir()
    cases["wrong name"] = write_npz(tmp_path / "named", [{"nope": np.zeros((1, 3, 16, 16), np.float32)}])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    np.savez(pickled / "a.npz", x=np.array([{"evil": 1}], dtype=object))
    cases["pickled npz"] = pickled
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "a.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    cases["pickled npy"] = npy
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.npz").write_bytes(b"PK\x03\x04 not a zip")
    cases["corrupt npz"] = corrupt
    cases["missing"] = tmp_path / "does-not-exist"
    for label, folder in cases.items():
        result, files = _quantize(model, folder, tmp_path / f"out-{label.replace(' ', '-')}")
        assert result.exit_code == 4, (label, result.output)
        _assert_clean(result, files)


def test_constant_and_extreme_inputs_still_quantize(tmp_path: Path):
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL)
    for label, change in {"zeros": np.zeros_like, "huge": lambda x: (x * 1e30).astype(np.float32)}.items():
        result, files = _quantize(model, _mutated(tmp_path, label, change), tmp_path / f"out-{label}")
        assert result.exit_code == 0 and files == ["q.onnx"], result.output
        quantized = onnx.load(str(tmp_path / f"out-{label}" / "q.onnx"))
        read_as_scale = {n.input[1] for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
        scales = [numpy_helper.to_array(t) for t in quantized.graph.initializer if t.name in read_as_scale]
        assert scales and all(np.all(np.isfinite(s)) and np.all(s > 0) for s in scales)  # never a zero scale


def _int_model(dtype: int) -> bytes:
    """One integer input (token ids) gathered from a float table, then a MatMul."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.normal(0, 1, (50, 8)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.normal(0, 1, (8, 4)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "ids"], ["e"], name="gather"),
         onnx.helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")],
        "ids", [onnx.helper.make_tensor_value_info("ids", dtype, [1, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 4])], [table, w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(axis=st.integers(0, 3), first=st.booleans())
def test_samples_with_no_values_are_refused(tmp_path_factory, axis: int, first: bool):
    """A zero-size sample (a zero batch, or any zero dim) would give a range, and a scale, made
    up from no data."""
    folder = tmp_path_factory.mktemp("empty-batch")
    model = folder / "m.onnx"
    model.write_bytes(tiny_cnn(batch="N").SerializeToString())
    shape = [1, 3, 16, 16]
    shape[axis] = 0
    empty, full = {"x": np.zeros(shape, np.float32)}, {"x": np.ones((1, 3, 16, 16), np.float32)}
    calib = write_npz(folder / "calib", [empty, full] if first else [full, empty])
    result, files = _quantize(model, calib, folder / "out")
    assert result.exit_code == 4 and "no values" in result.output, result.output
    _assert_clean(result, files)


@SETTINGS
@given(value=st.one_of(st.integers(2**31, 2**63 - 1), st.integers(-(2**63), -(2**31) - 1)))
def test_int64_values_an_int32_input_cannot_hold_are_refused(tmp_path_factory, value: int):
    folder = tmp_path_factory.mktemp("int64")
    model = folder / "m.onnx"
    model.write_bytes(_int_model(onnx.TensorProto.INT32))
    ids = np.array([[1, 2, 3, 4, 5, value]], np.int64)
    result, files = _quantize(model, write_npz(folder / "calib", [{"ids": ids}]), folder / "out")
    assert result.exit_code == 4 and "wrap" in result.output, result.output
    _assert_clean(result, files)


def test_float64_overflow_is_one_line_and_no_numpy_warning(tmp_path: Path):
    """float64 samples past float32's range: refused on one line, no RuntimeWarning on stderr."""
    import subprocess
    import sys

    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL)
    calib = write_npz(tmp_path / "calib", [{"x": np.full((1, 3, 16, 16), 1e300, np.float64)}])
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "onnxquant", "quantize", str(model), "-o", str(tmp_path / "q.onnx"),
                           "--calib-data", str(calib)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr
    assert "Warning" not in done.stderr and not (tmp_path / "q.onnx").exists()
