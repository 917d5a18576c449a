"""No weighted op stays float in silence: any op type, subgraphs included, with its reason and share."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxquant
from models.tiny import _init, _model, tiny_if_model
from onnxquant.api import FLOAT_LAYERS_KEY
from onnxquant.float_weights import float_weighted_nodes, weight_bytes
from onnxquant.inspect_model import inspect_model


def _einsum_model() -> onnx.ModelProto:
    """A Gemm onnxquant quantizes, then an Einsum layer (an op type no rule knows) holding most weights."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Einsum", ["r", "w2"], ["y"], name="einsum", equation="bi,io->bo")]
    inits = [_init("w1", rng.normal(0, 0.3, (16, 32))), _init("b1", rng.normal(0, 0.1, 32)),
             _init("w2", rng.normal(0, 0.3, (32, 64)))]
    graph = helper.make_graph(nodes, "einsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    return _model(graph)


def _samples(count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (4, 16)).astype(np.float32)} for _ in range(count)]


def test_an_unknown_weighted_op_is_reported_with_its_share_and_a_warning(tmp_path):
    model = _einsum_model()
    out = tmp_path / "q.onnx"
    result = onnxquant.quantize(model, _samples(), output=out)
    floats = {n.name: n for n in result.float_nodes}
    einsum = floats["einsum"]
    assert einsum.op_type == "Einsum" and einsum.reason == "op type not quantized"
    total = weight_bytes(model)
    assert einsum.weight_bytes == 32 * 64 * 4 and abs(einsum.share - 32 * 64 * 4 / total) < 1e-9
    assert einsum.share > 0.7 and result.warnings and "stay float" in result.warnings[0]
    data = result.to_dict()
    assert data["float_weight_share"] > 0.7 and data["warnings"] == result.warnings
    # inspect reads the reasons the model carries
    info = inspect_model(out)
    layer = next(x for x in info.layers if x.node == "einsum")
    assert layer.precision == "float" and layer.reason == "op type not quantized"
    assert json.loads(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == FLOAT_LAYERS_KEY))


def test_every_float_weight_left_in_the_output_is_listed():
    """Whatever each op's rules decide (subgraph bodies included), every node of the written model
    that still reads a float weight is in the report."""
    samples = [{"x": np.random.default_rng(k).normal(0, 1, (1, 3, 8, 8)).astype(np.float32),
                "flag": np.array(k % 2 == 0)} for k in range(4)]
    left_somewhere = False
    for model, feeds in ((tiny_if_model(), samples), (_einsum_model(), _samples())):
        result = onnxquant.quantize(model, feeds)
        left = {w.node for w in float_weighted_nodes(result.model) if w.weight_bytes}
        left_somewhere |= bool(left)
        assert left <= {n.name for n in result.float_nodes if n.weight_bytes and n.reason}
    assert left_somewhere, "the Einsum keeps a float weight: the check above compared something"


def test_subgraph_weights_are_found():
    found = {w.node: w for w in float_weighted_nodes(tiny_if_model())}
    assert found["conv"].in_subgraph is False
    assert found["then_conv"].in_subgraph is True  # reads the outer graph's wb


def test_the_cli_summary_says_what_stays_float_and_warns(tmp_path):
    from click.testing import CliRunner

    from onnxquant.cli import main
    from tests.conftest import write_npz

    source = tmp_path / "einsum.onnx"
    onnx.save(_einsum_model(), str(source))
    calib = write_npz(tmp_path / "calib", _samples())
    result = CliRunner().invoke(main, ["quantize", "--integer-compute", str(source), "-o", str(tmp_path / "q.onnx"), "--calib-data", str(calib)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "integer kernels: 1 of 1 quantized layers run as integer kernels in onnxruntime" in lines
    assert any(line.startswith("left float:") and "of the input model's weight bytes" in line for line in lines)
    assert any("Einsum: op type not quantized (" in line for line in lines)
    assert any(line.startswith("warning: ") and "stay float (Einsum)" in line for line in lines)
