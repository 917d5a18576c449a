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


def _qdq_matmul_then_attention(folder: Path) -> Path:
    """x @ W (a weight), then (x @ W) @ (x @ W)^T (two activations, as attention's scores); the
    weighted MatMul alone quantized to QDQ by onnxruntime, as a shipped int8 transformer has it."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(5).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
         helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1], name="t"),
         helper.make_node("MatMul", ["y", "yt"], ["scores"], name="scores_mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 4])], [numpy_helper.from_array(w, "w")])
    source, partial = folder / "attn.onnx", folder / "attn.qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 4, 8)).astype(np.float32)} for s in range(6)]
    quantize_static(str(source), str(partial), _Reader(feeds), quant_format=QuantFormat.QDQ, nodes_to_quantize=["proj"])
    return partial


def test_a_qdq_model_whose_only_float_matmuls_read_two_activations_stops(tmp_path: Path):
    partial = _qdq_matmul_then_attention(tmp_path)
    assert compressed_layers(onnx.load(str(partial)))["QDQ MatMul"] == 1
    feeds = [{"x": np.random.default_rng(10 + s).standard_normal((1, 4, 8)).astype(np.float32)} for s in range(4)]
    with pytest.raises(AlreadyQuantizedError, match="already quantized .*QDQ MatMul 1"):
        onnxquant.quantize(partial, feeds)


def _qdq_matmul_then(extra_nodes: list, extra_inits: list, outputs: list, extra_inputs: tuple = ()) -> onnx.ModelProto:
    """A shipped QDQ MatMul (int8 weight behind a DequantizeLinear) in front of ``extra_nodes``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (8, 8)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "ws"), numpy_helper.from_array(np.int8(0), "wz"), *extra_inits]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], name="dq"),
             helper.make_node("MatMul", ["x", "wdq"], ["y"], name="pre_mm"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                           *extra_inputs], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_float_gemms_inside_an_if_body_are_quantized_not_refused():
    """The body's planned Gemms reach the selection under qualified names without the body's
    weights: they still count as float weighted layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w_{name}")
        return helper.make_graph([helper.make_node("Gemm", ["y", f"w_{name}"], [f"o_{name}"], name=f"g_{name}")],
                                 name, [], [helper.make_tensor_value_info(f"o_{name}", TensorProto.FLOAT, [1, 8])], [w])

    model = _qdq_matmul_then(
        [helper.make_node("If", ["c"], ["out"], name="if0", then_branch=branch("a"), else_branch=branch("b"))], [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])],
        (helper.make_tensor_value_info("c", TensorProto.BOOL, []),))
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32), "c": np.array(b)} for b in (True, False) * 2]
    result = onnxquant.quantize(model, feeds, INTEGER_KERNELS)
    assert result.quantized_nodes.get("Gemm") == 2
    assert any(note.startswith("already quantized: QDQ MatMul 1") for note in result.notes)


def test_a_float_lstm_after_a_qdq_matmul_gets_int8_weights():
    """LSTM has no QDQ rule: the check counts it as a weighted layer instead of failing on it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 16, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([0], np.int64), "ax")]
    model = _qdq_matmul_then([helper.make_node("Unsqueeze", ["y", "ax"], ["y3"], name="unsq"),
                              helper.make_node("LSTM", ["y3", "W", "R"], ["out"], name="lstm", hidden_size=4)],
                             inits, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 4])])
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(4)]
    result = onnxquant.quantize(model, feeds, INTEGER_KERNELS)
    assert result.quantized_nodes.get("LSTM") == 1
    assert any(note.startswith("already quantized: QDQ MatMul 1") for note in result.notes)
    lstm = next(n for n in result.model.graph.node if n.op_type in ("LSTM", "DynamicQuantizeLSTM"))
    int8 = {i.name for i in result.model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert any(w in int8 or (w in producers and producers[w].input[0] in int8) for w in lstm.input[1:3])
