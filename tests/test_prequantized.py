"""Already-compressed input: detected; the float remainder is quantized, or one line and exit 8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

import onnxquant
from models.quirks import feature_samples, sklearn_style_mlp
from models.tiny import image_samples, tiny_cnn
from onnxquant.cli import main
from onnxquant.errors import AlreadyQuantizedError
from onnxquant.prequantized import compressed_layers
from tests.conftest import INTEGER_KERNELS, run, write_npz


class _Reader(CalibrationDataReader):
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = iter(samples)

    def get_next(self):
        return next(self.samples, None)


@pytest.fixture(scope="module")
def dynamic_mlp(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dynamic")
    onnx.save(sklearn_style_mlp(), str(folder / "mlp.onnx"))
    quantize_dynamic(str(folder / "mlp.onnx"), str(folder / "mlp.int8.onnx"))
    return folder / "mlp.int8.onnx"


def test_a_fully_quantized_model_stops_with_one_line(dynamic_mlp: Path, tmp_path: Path):
    assert compressed_layers(onnx.load(str(dynamic_mlp)))["MatMulInteger"] == 2
    with pytest.raises(AlreadyQuantizedError, match="already quantized .*MatMulInteger 2"):
        onnxquant.quantize(dynamic_mlp, feature_samples(4))
    calib = write_npz(tmp_path / "calib", feature_samples(4))
    out = tmp_path / "again.onnx"
    result = CliRunner().invoke(main, ["quantize", str(dynamic_mlp), "-o", str(out), "--calib-data", str(calib)])
    assert result.exit_code == 8
    assert result.output.startswith("error: the model is already quantized") and result.output.count("\n") == 1
    assert not out.exists()


def test_the_float_remainder_of_a_qdq_model_is_quantized(tmp_path: Path):
    source = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(), str(source))
    partial = tmp_path / "cnn.qdq.onnx"
    quantize_static(str(source), str(partial), _Reader(image_samples(6, seed=2)), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"])
    assert compressed_layers(onnx.load(str(partial)))["QDQ Conv"] == 3
    result = onnxquant.quantize(partial, image_samples(8, seed=3), INTEGER_KERNELS)
    assert result.quantized_nodes.get("Gemm") == 1 and "Conv" not in result.quantized_nodes
    assert any(note.startswith("already quantized: QDQ Conv 3") for note in result.notes)
    # the input's own QDQ layers are not reported as float
    assert not any(n.op_type == "Conv" for n in result.float_nodes)
    assert result.fusion.quantized_layers == 1 and result.fusion.integer_layers == 1
    feed = image_samples(1, seed=4)[0]
    ref, got = run(source, feed)[0].ravel(), run(result.model, feed)[0].ravel()
    assert ref @ got / np.linalg.norm(ref) / np.linalg.norm(got) > 0.98
