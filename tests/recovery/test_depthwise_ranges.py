import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.errors import UsageError
from onnxquant.passes.prepare import prepare_model
from onnxquant.recipe import Recipe
from onnxquant.recovery.depthwise_ranges import K_MAX, even_depthwise_inputs, factors, regions
from tests.conftest import run

NO_SEARCH = Recipe().with_overrides(search={"enabled": False})
C = 16
# output channel c of the first Conv is this much louder than channel 0 (100x over the tensor);
# the depthwise Conv (with its batch-norm folded in) weighs each channel back by its inverse, so
# the quiet ones matter as much downstream
SPREAD = np.geomspace(0.1, 10.0, C)


def _block(activation: str = "hardswish", reader: str = "depthwise") -> onnx.ModelProto:
    """Conv (channel ranges 100x apart) -> activation -> depthwise Conv -> Relu -> Conv -> pool:
    a mobile CNN's expand / depthwise pair. ``reader``: what else reads the activation."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (C, 3, 3, 3)) * SPREAD.reshape(C, 1, 1, 1)
    w2 = rng.normal(0, 0.5, (C, 1, 3, 3)) / SPREAD.reshape(C, 1, 1, 1)
    w3 = rng.normal(0, 0.5, (8, C, 1, 1))
    f32 = np.float32
    inits = [numpy_helper.from_array(w1.astype(f32), "w1"), numpy_helper.from_array((0.2 * SPREAD).astype(f32), "b1"),
             numpy_helper.from_array(w2.astype(f32), "w2"), numpy_helper.from_array(np.zeros(C, f32), "b2"),
             numpy_helper.from_array(w3.astype(f32), "w3"), numpy_helper.from_array(np.zeros(8, f32), "b3"),
             numpy_helper.from_array(np.array(0.0, f32), "lo"), numpy_helper.from_array(np.array(6.0, f32), "hi")]
    act = {"hardswish": helper.make_node("HardSwish", ["c1"], ["a"], name="act"),
           "relu": helper.make_node("Relu", ["c1"], ["a"], name="act"),
           "relu6": helper.make_node("Clip", ["c1", "lo", "hi"], ["a"], name="act")}[activation]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand", pads=[1, 1, 1, 1]), act,
             helper.make_node("Conv", ["a", "w2", "b2"], ["c2"], name="depthwise", pads=[1, 1, 1, 1], group=C),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project")]
    if reader == "residual":  # the activation is read by an Add too: its scale cannot be taken back there
        nodes.append(helper.make_node("Add", ["c3", "a"], ["s"], name="residual"))
        inits[4] = numpy_helper.from_array(np.resize(w3, (C, C, 1, 1)).astype(f32), "w3")
        inits[5] = numpy_helper.from_array(np.zeros(C, f32), "b3")
        nodes.append(helper.make_node("GlobalAveragePool", ["s"], ["y"], name="gap"))
    else:
        nodes.append(helper.make_node("GlobalAveragePool", ["c3"], ["y"], name="gap"))
    outputs = C if reader == "residual" else 8
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def _sqnr(model: onnx.ModelProto, q: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> float:
    ref = np.concatenate([run(model, s)[0].ravel() for s in samples])
    got = np.concatenate([run(q, s)[0].ravel() for s in samples])
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    return prepare_model(model, integer_gates=True)[0]


def test_hardswish_and_relu_regions_are_found_and_what_else_reads_them_is_refused():
    swish = regions(_prepared(_block("hardswish")))
    # x * HardSigmoid(x): the gate's depthwise 1x1 Conv takes the scale back as the depthwise Conv does
    assert len(swish) == 1 and len(swish[0].absorbers) == 2 and len(swish[0].tensors) == 2
    assert len(regions(_prepared(_block("relu")))) == 1
    assert regions(_prepared(_block("relu6"))) == []  # min(x, 6) is not scale-free
    assert regions(_prepared(_block("hardswish", reader="residual"))) == []


@pytest.mark.parametrize("activation", ["hardswish", "relu"])
def test_the_float_function_is_kept_and_the_quiet_channels_are_magnified(activation):
    model = _block(activation)
    prepared = _prepared(model)
    before = {i.name: numpy_helper.to_array(i).copy() for i in prepared.graph.initializer}
    report = even_depthwise_inputs(prepared, _samples(8, 1))
    assert report.regions == 1 and report.channels >= C // 2
    after = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    expand = [n for n in prepared.graph.node if n.name == "expand"][0].input[1]
    k = np.abs(after[expand]).reshape(C, -1).max(1) / np.abs(before[expand]).reshape(C, -1).max(1)
    assert k[0] > 3 * k[-1]  # the quietest channel grows, the loudest hardly
    assert k.max() <= K_MAX + 1e-6
    for s in _samples(3, 2):
        np.testing.assert_allclose(run(prepared, s)[0], run(model, s)[0], rtol=1e-4, atol=1e-4)


def test_a_common_floor_is_widened_rather_than_left_to_block_every_channel():
    # hard-swish outputs: every channel reaches -0.375, the maxima are 0.5 .. 10
    hi = np.geomspace(0.5, 10.0, 8)
    lo = np.full(8, -0.375)
    k = factors([(lo, hi, False)])
    assert k[0] >= 3  # not held at 1 by the shared floor
    assert factors([(lo, hi, False)])[-1] == pytest.approx(1.0)
    assert np.all(k * lo >= -0.375 * 4 - 1e-9) and np.all(k * hi <= 10.0 + 1e-9)  # within the widened range


@pytest.mark.parametrize(("activation", "gain_db"), [("hardswish", 4), ("relu", 12)])  # measured 6.4, 21.3
def test_quantized_block_is_much_closer_to_fp32_with_the_ranges_evened(activation, gain_db):
    model = _block(activation)
    calib, held = _samples(16, 1), _samples(8, 2)
    on = onnxquant.quantize(model, calib, NO_SEARCH)  # default: on with per-channel weights
    off = onnxquant.quantize(model, calib, NO_SEARCH.with_overrides(recovery={"depthwise_equalize": False}))
    assert any("depthwise input equalisation: " in n and "in 1 depthwise Conv" in n for n in on.notes)
    assert not any("depthwise input equalisation" in n for n in off.notes)
    assert _sqnr(model, on.model, held) > _sqnr(model, off.model, held) + gain_db


def test_per_tensor_weights_leave_it_off_unless_asked():
    model = _block("hardswish")
    per_tensor = NO_SEARCH.with_overrides(quantization={"per_channel": False}, recovery={"equalize": False})
    assert not any("depthwise input" in n for n in onnxquant.quantize(model, _samples(16, 1), per_tensor).notes)


def test_saved_statistics_need_the_data_again_or_the_pass_off_both_times(tmp_path):
    model = _block("hardswish")
    stats = tmp_path / "stats.npz"
    onnxquant.quantize(model, _samples(16, 1), NO_SEARCH, save_stats_to=stats)
    with pytest.raises(UsageError, match="--no-depthwise-equalize"):
        onnxquant.quantize(model, None, NO_SEARCH, stats=stats)
    again = onnxquant.quantize(model, _samples(16, 1), NO_SEARCH, stats=stats)  # the same factors from the same data
    first = onnxquant.quantize(model, _samples(16, 1), NO_SEARCH)
    assert again.model.SerializeToString() == first.model.SerializeToString()
    off = NO_SEARCH.with_overrides(recovery={"depthwise_equalize": False})
    onnxquant.quantize(model, _samples(16, 1), off, save_stats_to=tmp_path / "off.npz")
    assert onnxquant.quantize(model, None, off, stats=tmp_path / "off.npz").model is not None
