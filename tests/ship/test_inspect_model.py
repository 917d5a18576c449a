from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from models.tiny import tiny_cnn
from onnxquant.cli import main
from onnxquant.inspect_model import inspect_model


def test_float_model_layers_parameters_and_size(cnn_path: Path):
    info = inspect_model(cnn_path)
    assert [layer.op_type for layer in info.layers] == ["Conv", "Conv", "Conv", "Gemm"]
    assert {layer.precision for layer in info.layers} == {"float"}
    model = onnx.load(str(cnn_path))
    assert info.total_parameters == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert info.size == cnn_path.stat().st_size
    assert 0 < info.size_deflated < info.size
    assert info.op_counts["Conv"] == 3 and info.made_by is None


def test_quantized_model_is_int8_and_stamped(quantized_path: Path):
    info = inspect_model(quantized_path)
    assert {layer.precision for layer in info.layers} == {"int8"}
    assert info.precision_counts()["int8"]["layers"] == 4
    assert info.made_by is not None
    assert info.parameters.get("int8", 0) > 0 and "DequantizeLinear" in info.op_counts


def test_sparsity_counts_exact_zeros(tmp_path: Path):
    model = tiny_cnn()
    w = next(t for t in model.graph.initializer if t.name == "w1")
    values = numpy_helper.to_array(w).copy()
    values.reshape(-1)[: values.size // 2] = 0.0
    w.CopyFrom(numpy_helper.from_array(values, "w1"))
    path = tmp_path / "sparse.onnx"
    onnx.save(model, str(path))
    layer = next(layer for layer in inspect_model(path).layers if layer.weight == "w1")
    assert layer.sparsity == (values == 0).sum() / values.size >= 0.5


def test_cli_text_and_json(quantized_path: Path):
    text = CliRunner().invoke(main, ["inspect", str(quantized_path), "--layers"])
    assert text.exit_code == 0, text.output
    assert "weighted layers: 4 int8" in text.output and "sparsity:" in text.output and "Gemm" in text.output
    data = json.loads(CliRunner().invoke(main, ["inspect", str(quantized_path), "--json"]).output)
    assert data["precision"]["int8"]["layers"] == 4 and len(data["layers"]) == 4


def test_cli_bad_model_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 3 and result.output.startswith("error:") and "Traceback" not in result.output


def test_weights_in_external_data_are_read_from_disk(tmp_path: Path):
    from onnx import external_data_helper

    from models.tiny import tiny_mlp

    model = tiny_mlp(hidden=512)
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    external_data_helper.write_external_data_tensors(model, str(tmp_path))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    info = inspect_model(path)
    assert info.size == path.stat().st_size + (tmp_path / "w.bin").stat().st_size
    assert info.size_deflated is None  # the file alone would say nothing of the weights
    assert [layer.parameters for layer in info.layers] == [8 * 512, 512 * 4]


def test_recurrent_layers_count_w_and_r_and_their_precision(tmp_path: Path):
    """An LSTM is a weighted layer (W and R); as onnxruntime's DynamicQuantizeLSTM or behind a
    DequantizeLinear it is int8, whatever its float bias."""
    import onnxquant
    from models.tiny_control_flow import recurrent_samples, tiny_recurrent
    from onnxquant.recipe import recipe_for_target

    model = tiny_recurrent("LSTM", hidden=32)
    w, r = (numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == n)) for n in ("W", "R"))
    float_layer = next(x for x in inspect_model(model).layers if x.op_type == "LSTM")
    assert float_layer.precision == "float" and float_layer.parameters == w.size + r.size
    for target, kernel in (("cpu", "DynamicQuantizeLSTM"), ("openvino", "LSTM")):
        quantized = onnxquant.quantize(model, recurrent_samples(8), recipe_for_target(target)).model
        layer = next(x for x in inspect_model(quantized).layers if x.node == "rnn")
        assert layer.op_type == kernel and layer.precision == "int8" and layer.parameters == w.size + r.size


def _tree_regressor(path: Path) -> Path:
    """One decision stump (ai.onnx.ml): its thresholds and leaf values are attributes, no initializer."""
    tree = onnx.helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", name="stump", n_targets=1,
        nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.5, 0.0, 0.0],
        nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[-1.0, 1.0])
    graph = onnx.helper.make_graph([tree], "stump", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13),
                                                         onnx.helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.save(model, str(path))
    return path


def test_attribute_parameters_of_ml_ops_are_a_float_layer(tmp_path: Path):
    # a LightGBM/sklearn tree model keeps every parameter in attributes: inspect used to say
    # "parameters: 0" and list no float layer, while quantize said 100% of the weight bytes stay float
    info = inspect_model(_tree_regressor(tmp_path / "stump.onnx"))
    assert [(layer.op_type, layer.precision, layer.parameters) for layer in info.layers] == \
        [("TreeEnsembleRegressor", "float", 5)]  # 3 thresholds, 2 leaf weights
    assert info.parameters == {"float": 5} and info.float_weight_share() == 1.0
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "stump.onnx")])
    assert text.exit_code == 0 and "float weighted layers: 1, 100.0% of this file's weight bytes" in text.output


def test_sequence_map_and_string_values_are_named_by_type(tmp_path: Path):
    # a classifier converted with ZipMap returns a sequence of maps, and a text model reads strings:
    # inspect used to print "probabilities ? []" (a scalar's shape) and "text object [?, 1]"
    h = onnx.helper
    seq_map = h.make_sequence_type_proto(h.make_map_type_proto(onnx.TensorProto.INT64,
                                                               h.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)))
    graph = h.make_graph(
        [h.make_node("ZipMap", ["x"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]),
         h.make_node("Identity", ["text"], ["same"])], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2]),
         h.make_tensor_value_info("text", onnx.TensorProto.STRING, ["n", 1])],
        [h.make_value_info("probabilities", seq_map), h.make_tensor_value_info("same", onnx.TensorProto.STRING, ["n", 1])])
    path = tmp_path / "zipmap.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 15), h.make_opsetid("ai.onnx.ml", 1)]), path)
    info = inspect_model(path)
    assert info.outputs[0] == {"name": "probabilities", "dtype": "seq(map(int64, float32))", "shape": None}
    assert info.inputs[1] == {"name": "text", "dtype": "string", "shape": ["n", 1]}
    text = CliRunner().invoke(main, ["inspect", str(path)])
    assert text.exit_code == 0, text.output
    assert "outputs: probabilities seq(map(int64, float32)); same string [n, 1]" in text.output
    assert "inputs: x float32 [n, 2]; text string [n, 1]" in text.output


def _shared_weight_model() -> onnx.ModelProto:
    """Two MatMuls read one 64x64 weight (as tied embeddings do); a third reads its own."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 64] x) => (float[1, 64] y) {
            a = MatMul(x, w)
            b = MatMul(a, w)
            y = MatMul(b, v)
        }""")
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([numpy_helper.from_array(rng.standard_normal((64, 64), np.float32), name)
                                    for name in ("w", "v")])
    return model


def test_a_weight_read_by_two_layers_counts_once(tmp_path: Path):
    info = inspect_model(_shared_weight_model())
    assert [layer.weight for layer in info.layers] == ["w", "w", "v"]
    assert [layer.shared for layer in info.layers] == [False, True, False]
    assert info.weight_bytes == 2 * 64 * 64 * 4
    assert sum(layer.float_bytes for layer in info.layers) == info.weight_bytes
    assert info.float_weight_share() == 1.0
    assert info.precision_counts() == {"float": {"layers": 3, "parameters": 2 * 64 * 64}}
    assert info.total_parameters == 2 * 64 * 64
    path = tmp_path / "shared.onnx"
    onnx.save(_shared_weight_model(), str(path))
    data = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
    assert data["float_weight_share"] == 1.0 and data["precision"]["float"]["parameters"] == 2 * 64 * 64
