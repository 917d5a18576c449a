from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxquant.calibration.feeds import InputSpec, check_feed
from onnxquant.calibration.preprocess import ImagePreprocess
from onnxquant.calibration.sources import open_source
from onnxquant.errors import CalibrationDataError


def test_npz_folder_is_sorted_and_lazy(tmp_path: Path):
    for i in (2, 0, 1):
        np.savez(tmp_path / f"s{i}.npz", x=np.full((1, 2), i, np.float32))
    source = open_source(tmp_path, ["x"])
    assert len(source) == 3
    assert [int(s["x"][0, 0]) for s in source] == [0, 1, 2]
    assert [int(s["x"][0, 0]) for s in source] == [0, 1, 2]  # re-iterable


def test_pickled_npz_is_refused(tmp_path: Path):
    np.savez(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationDataError, match="pickled"):
        list(open_source(tmp_path, ["x"]))


def test_npy_only_folder_is_explained(tmp_path: Path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CalibrationDataError, match=".npy"):
        open_source(tmp_path, ["x"])


def test_empty_and_missing_folders(tmp_path: Path):
    with pytest.raises(CalibrationDataError, match="no .npz"):
        open_source(tmp_path, ["x"])
    with pytest.raises(CalibrationDataError, match="not found"):
        open_source(tmp_path / "nope", ["x"])


def test_image_folder_with_declared_preprocessing(tmp_path: Path):
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    pre = ImagePreprocess(size=(16, 16), mean=(127.0,) * 3, std=(128.0,) * 3)
    [sample] = list(open_source(tmp_path, ["image"], pre))
    assert sample["image"].shape == (1, 3, 16, 16)
    assert np.allclose(sample["image"], (200 - 127) / 128)
    nhwc = ImagePreprocess(size=(8, 10), layout="NHWC")
    [sample] = list(open_source(tmp_path, ["image"], nhwc))
    assert sample["image"].shape == (1, 8, 10, 3)


def test_onnxruntime_reader_and_iterables():
    class Reader:
        def __init__(self):
            self.items = [{"x": np.ones(2)}, {"x": np.zeros(2)}]

        def get_next(self):
            return self.items.pop(0) if self.items else None

    assert len(list(open_source(Reader(), ["x"]))) == 2
    assert len(list(open_source([{"x": np.ones(1)}] * 3, ["x"]))) == 3
    assert len(list(open_source((s for s in [{"x": np.ones(1)}]), ["x"]))) == 1


SPEC = [InputSpec("x", np.dtype("float32"), ("N", 3, 4))]


@pytest.mark.parametrize(
    "feed, message",
    [
        ({}, "missing input"),
        ({"x": np.zeros((1, 3, 4), np.float32), "y": np.zeros(1)}, "unknown input"),
        ({"x": np.zeros((1, 3, 5), np.float32)}, "axis 2"),
        ({"x": np.zeros((3, 4), np.float32)}, "rank 3"),
        ({"x": np.zeros((1, 3, 4), np.int64)}, "dtype int64"),
        ({"x": np.full((1, 3, 4), np.nan, np.float32)}, "NaN or Inf"),
        ({"x": np.full((1, 3, 4), np.inf, np.float32)}, "NaN or Inf"),
    ],
)
def test_bad_feeds_get_one_line_errors(feed, message):
    with pytest.raises(CalibrationDataError, match=message) as info:
        check_feed(feed, SPEC, 7)
    assert "\n" not in str(info.value) and "sample 7" in str(info.value)


def test_float64_is_cast_to_float32():
    out = check_feed({"x": np.zeros((2, 3, 4))}, SPEC, 0)
    assert out["x"].dtype == np.float32


@pytest.mark.parametrize("size", [(20000, 20000), (12000, 10000), (9000, 8000)])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, size: tuple[int, int]):
    """A small PNG that claims a huge image is refused from its header (no giant allocation)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    width, height = size
    rows = zlib.compress(b"".join(b"\0" + b"\0" * width * 3 for _ in range(min(height, 4))))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    preprocess = ImagePreprocess(size=(16, 16))
    with pytest.raises(CalibrationDataError, match="megapixels|decompression bomb"):
        preprocess(tmp_path / "bomb.png")


STRINGS = [InputSpec("text", np.dtype(object), ("N", 1))]


@pytest.mark.parametrize("value", [np.array([["a b"], ["c"]]), np.array([[b"a b"], [b"c"]]),
                                   np.array([["a b"], ["c"]], dtype=object)])
def test_text_for_a_string_input_is_accepted(value):
    # np.savez stores text as a fixed-width unicode (or bytes) array; only pickle keeps objects
    out = check_feed({"text": value}, STRINGS, 0)
    assert out["text"].dtype == object and out["text"].tolist() == [["a b"], ["c"]]


def test_numbers_for_a_string_input_are_refused():
    with pytest.raises(CalibrationDataError, match="expects strings"):
        check_feed({"text": np.zeros((2, 1), np.float32)}, STRINGS, 0)


def _text_classifier() -> onnx.ModelProto:
    """A string input read by an ai.onnx.ml LabelEncoder (a word's score) into a small MLP: the
    shape of a scikit-learn text pipeline (TfidfVectorizer + MLPClassifier) that skl2onnx writes."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    nodes = [helper.make_node("LabelEncoder", ["text"], ["score"], domain="ai.onnx.ml", keys_strings=words,
                              values_floats=[0.1, 0.5, -0.3, 0.9], default_float=0.0),
             helper.make_node("MatMul", ["score", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("text", onnx.TensorProto.STRING, ["N", 1])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)])


def test_a_text_model_quantizes_from_an_npz_folder(tmp_path: Path):
    import onnx

    import onnxquant

    model = tmp_path / "text.onnx"
    onnx.save(_text_classifier(), str(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    words = np.array(["alpha", "beta", "gamma", "delta", "other"])
    rng = np.random.default_rng(1)
    for i in range(8):
        np.savez(calib / f"{i}.npz", text=rng.choice(words, (4, 1)))  # saved as '<U5', loaded without pickle
    recipe = onnxquant.Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False})
    result = onnxquant.quantize(str(model), str(calib), recipe, output=tmp_path / "text.int8.onnx")
    assert result.samples == 8
    written = onnx.load(str(tmp_path / "text.int8.onnx"))
    assert sum(n.op_type == "DequantizeLinear" for n in written.graph.node) >= 2  # both MatMuls' weights
