"""A first-layer Conv estimated clearly slower as int8 than in fp32 (a few-channel stem on a
large image) stays float, the rest of the model integer kernels."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.first_layers import FIRST_LAYER_REASON, FIRST_LAYERS_NOTE, first_layers_said
from onnxquant.pipeline.state import State
from onnxquant.planner import Selection
from onnxquant.recipe import recipe_for_target

TARGETS = ["cpu-avx2", "cpu-vnni"]  # explicit CPU kinds: the same answer on any host


def _stem_cnn(size: int, seed: int = 0) -> onnx.ModelProto:
    """A 3 -> 32 3x3 stem on size x size, then two wide pointwise layers (faster as int8)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, out: str, cin: int, cout: int, k: int) -> None:
        w, b = f"{out}_w", f"{out}_b"
        inits.extend([numpy_helper.from_array(rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32), w),
                      numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), b)])
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{out}_c"], kernel_shape=[k, k], pads=[k // 2] * 4,
                                      name=out))
        nodes.append(helper.make_node("Relu", [f"{out}_c"], [out], name=f"{out}_relu"))

    conv("x", "stem", 3, 32, 3)
    conv("stem", "pw0", 32, 128, 1)
    conv("pw0", "pw1", 128, 128, 1)
    nodes.append(helper.make_node("GlobalAveragePool", ["pw1"], ["y"], name="pool"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(size: int, count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)} for _ in range(count)]


def _quantize(size: int, target: str, **overrides) -> onnxquant.QuantizeResult:
    recipe = recipe_for_target(target).with_overrides(search={"enabled": False}, **overrides)
    return onnxquant.quantize(_stem_cnn(size), _samples(size), recipe)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("target", TARGETS)
def test_a_slow_stem_stays_float_and_feeds_the_integer_layers(target: str):
    result = _quantize(56, target)
    assert result.float_compute is None  # the model as a whole keeps integer kernels
    assert result.weight_only == {}
    kind = target.split("-")[1]
    reasons = {n.name: n.reason for n in result.float_nodes}
    assert re.fullmatch(r"a first layer estimated slower as int8: (\d+\.\d\d) ms int8 vs "
                        rf"(\d+\.\d\d) ms fp32 on {kind}", reasons["stem"])
    notes = [n for n in result.notes if n.startswith("first layers kept float, estimated slower as int8")]
    assert len(notes) == 1 and re.search(rf"stem \(\d+\.\d\d ms int8 vs \d+\.\d\d ms fp32 on {kind}\)$", notes[0])
    model = result.model
    producer = _producers(model)
    stem = next(n for n in model.graph.node if n.op_type == "Conv" and n.name == "stem")
    assert stem.input[0] == "x"  # the graph input itself: no Q/DQ round trip in front
    assert stem.input[1] not in producer  # its float weight, as given
    stored = {i.name: i for i in model.graph.initializer}[stem.input[1]]
    assert stored.data_type == TensorProto.FLOAT
    # the next layer reads the stem's output quantized, and runs as an integer kernel
    assert result.fusion is not None and result.fusion.float_islands == []
    consumers = [n for n in model.graph.node if any(i in stem.output or i == "stem" for i in n.input)]
    assert consumers and all(n.op_type in ("Relu", "QuantizeLinear") for n in consumers)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "x" for n in model.graph.node)
    # closer to fp32 than the all-integer model
    ref = ort.InferenceSession(_stem_cnn(56).SerializeToString(), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = _samples(56, 1, seed=7)[0]
    want, got = ref.run(None, feed)[0].ravel(), ours.run(None, feed)[0].ravel()
    assert float(np.dot(want, got) / np.linalg.norm(want) / np.linalg.norm(got)) > 0.999


def test_onnxruntime_runs_the_stem_in_float_and_the_next_layer_as_an_integer_kernel(tmp_path):
    """In onnxruntime's optimized graph the stem is a float Conv on the input, and the layer after
    it a QLinearConv reading its output through one QuantizeLinear (no float island)."""
    result = _quantize(56, "cpu-avx2")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {i.name: i for i in optimized.graph.initializer}
    first = next(n for n in optimized.graph.node if "x" in n.input)
    assert first.op_type in ("Conv", "FusedConv") and inits[first.input[1]].data_type == TensorProto.FLOAT
    ops = [n.op_type for n in optimized.graph.node]
    assert "QLinearConv" in ops and "DequantizeLinear" not in ops[: ops.index("QLinearConv")]


@pytest.mark.parametrize("target", TARGETS)
def test_a_small_stem_keeps_its_integer_kernel(target: str):
    """On 16 x 16 the difference (a few us) is lost in a run's own overhead."""
    result = _quantize(16, target)
    assert result.weight_only == {} and not any("first layers" in n for n in result.notes)


def test_integer_compute_and_exclude_keep_their_meaning():
    """``integer_compute = true`` keeps every integer kernel; a stem the user excludes stays
    entirely float (no int8 weights)."""
    kept = _quantize(56, "cpu-avx2", quantization={"integer_compute": True})
    assert kept.weight_only == {}
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "x" for n in kept.model.graph.node)
    excluded = _quantize(56, "cpu-avx2", nodes={"exclude": ["stem"]})
    assert excluded.weight_only == {} and not any(n.startswith("first layers") for n in excluded.notes)
    assert [n.name for n in excluded.float_nodes if n.name == "stem"] == ["stem"]
    stem = next(n for n in excluded.model.graph.node if n.name == "stem")
    assert stem.input[1] in {i.name for i in excluded.model.graph.initializer}


def test_only_a_layer_reading_a_graph_input_is_considered():
    """The same slow 3-channel Conv behind another layer stays integer: inside the integer graph
    it would cost a Q/DQ round trip the estimate does not count."""
    model = _stem_cnn(56)
    relu = helper.make_node("Relu", ["x"], ["x_relu"], name="pre")
    model.graph.node.insert(0, relu)
    stem = next(n for n in model.graph.node if n.name == "stem")
    stem.input[0] = "x_relu"
    recipe = recipe_for_target("cpu-avx2").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(model, _samples(56), recipe)
    assert "stem" not in {n.name for n in result.float_nodes}
    assert any(n.op_type == "DequantizeLinear" and n.output[0] in next(m for m in result.model.graph.node
                                                                       if m.name == "stem").input
               for n in result.model.graph.node)


def test_the_note_names_only_first_layers_still_computed_in_float():
    """A search trial or mixed precision may keep the stem float for its own reason: no note then."""
    why = f"{FIRST_LAYER_REASON}0.34 ms int8 vs 0.23 ms fp32 on vnni"
    kept = Selection(float_nodes={"stem": ("Conv", why)})
    state = State(model=onnx.ModelProto(), recipe=recipe_for_target("cpu-vnni"), float_layers={"stem": why},
                  selection=kept, notes=(f"{FIRST_LAYERS_NOTE}: stale",))
    assert first_layers_said(state).notes == (
        "first layers kept float, estimated slower as int8: stem (0.34 ms int8 vs 0.23 ms fp32 on vnni)",)
    floated = Selection(float_nodes={"stem": ("Conv", "excluded by --exclude")})
    assert first_layers_said(replace(state, selection=floated)).notes == ()
