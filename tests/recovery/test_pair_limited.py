import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.recipe import Recipe
from onnxquant.recovery.pair_limited import PAIR_LIMIT, limited_rounding, pair_limited_scales
from tests.conftest import run


def _same_sign_pair_sums(q: np.ndarray) -> np.ndarray:
    """|q_2j| + |q_2j+1| of every same-sign neighbour pair along the last axis."""
    even = q.shape[-1] - q.shape[-1] % 2
    a, b = q[..., 0:even:2].astype(np.int64), q[..., 1:even:2].astype(np.int64)
    return np.where(a * b > 0, np.abs(a) + np.abs(b), 0)


def test_limited_rounding_changes_only_the_pairs_over_the_limit():
    rng = np.random.default_rng(0)
    targets = np.clip(rng.laplace(0, 30, (64, 33)), -127, 127)  # odd K: the last weight has no neighbour
    q = limited_rounding(targets)
    nearest = np.rint(targets)
    assert _same_sign_pair_sums(q).max() <= PAIR_LIMIT
    assert np.abs(q).max() <= 127
    over = _same_sign_pair_sums(nearest) > PAIR_LIMIT
    assert over.any()  # the test data does exercise the limit
    moved = (q[:, :32] != nearest[:, :32]).reshape(64, 16, 2).any(axis=2)
    assert not (moved & ~over).any()  # pairs within the limit keep nearest rounding
    assert np.array_equal(q[:, 32], nearest[:, 32])
    # an over-limit pair lands on the limit, at the integers nearest its two targets
    i, j = np.argwhere(over)[0]
    pair = q[i, 2 * j:2 * j + 2]
    assert abs(int(pair[0])) + abs(int(pair[1])) == PAIR_LIMIT
    t = np.abs(targets[i, 2 * j:2 * j + 2])
    assert abs(abs(int(pair[0])) - (t[0] - t[1] + PAIR_LIMIT) / 2) <= 0.5


def test_pair_limited_weights_reconstruct_better_than_7_bit():
    rows = np.random.default_rng(1).normal(0, 1, (96, 256))
    scale = pair_limited_scales(rows).astype(np.float64)[:, None]
    limited = limited_rounding(rows / scale) * scale
    seven = np.abs(rows).max(axis=1, keepdims=True) / 63
    err_limited = ((limited - rows) ** 2).sum()
    err_seven = ((np.rint(rows / seven) * seven - rows) ** 2).sum()
    assert err_limited < 0.6 * err_seven
    assert (np.abs(rows / scale).max(axis=1) > 64).mean() > 0.5  # most channels use more than 7 bits


def _pointwise_model(cin: int, cout: int, seed: int, head: bool = True) -> onnx.ModelProto:
    """ReLU6 activations (uint8 up to 255 once quantized) into a 1x1 Conv and a Gemm whose
    weights have many large same-sign neighbours: full 8-bit weights would overflow the u8s8
    kernels' 16-bit pair sums on x86 without VNNI; and a 3x3 Conv between them."""
    rng = np.random.default_rng(seed)
    w1 = (np.abs(rng.normal(0, 0.3, (cout, cin, 1, 1))) * rng.choice([-1, 1], (cout, 1, 1, 1))).astype(np.float32)
    w3 = (np.abs(rng.normal(0, 0.1, (cout, cout, 3, 3))) * rng.choice([-1, 1], (cout, 1, 1, 1))).astype(np.float32)
    wg = (np.abs(rng.normal(0, 0.05, (10, cout))) * rng.choice([-1, 1], (10, 1))).astype(np.float32)
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["a"], name="relu6"),
        helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], name="pointwise"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6_1"),
        helper.make_node("Conv", ["a1", "w3", "b3"], ["c3"], name="spatial", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["a3"], name="relu6_3"),
        helper.make_node("GlobalAveragePool", ["a3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32)), ("w1", w1),
        ("b1", rng.normal(0, 0.1, cout).astype(np.float32)), ("w3", w3),
        ("b3", rng.normal(0, 0.1, cout).astype(np.float32)), ("wg", wg), ("bg", np.zeros(10, np.float32))]]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    if not head:  # the 1x1 Conv's output alone, its bias centring it in ReLU6's linear range
        nodes = [*nodes[:3], helper.make_node("MaxPool", ["a1"], ["m"], name="identity", kernel_shape=[1, 1])]
        w1 = w1 / 8
        centred = 3 - 5.1 * w1.reshape(cout, cin).sum(axis=1)  # 5.1: the mean input after the clip at 6
        inits = [*inits[:2], numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(centred.astype(np.float32), "b1")]
        out = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, cout, 6, 6])
    graph = helper.make_graph(nodes, "pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
                              [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(cin: int, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(3, 8, (1, cin, 6, 6)).astype(np.float32)} for _ in range(n)]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each layer's integer weight, as rows of its output channels (K in the kernel's order)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in producer:
            q = inits[producer[node.input[1]].input[0]]
            out[node.name] = q.reshape(q.shape[0], -1)
    return out


def test_pair_limited_weights_run_exactly_in_onnxruntime_and_beat_7_bit():
    cin = 64
    model = _pointwise_model(cin, 32, seed=2)
    calib, held = _samples(cin, 16, seed=3), _samples(cin, 6, seed=4)
    seven_bit = Recipe().with_overrides(search={"enabled": False},
                                        quantization={"reduce_range": True, "pair_limited_weights": False})
    limited = onnxquant.quantize(model, calib, seven_bit.with_overrides(quantization={"pair_limited_weights": True}))
    plain = onnxquant.quantize(model, calib, seven_bit)
    assert any("pair-limited 8-bit weights" in n and "3 layers" in n for n in limited.notes)

    weights = _weights(limited.model)
    for name in ("pointwise", "spatial", "fc"):
        assert _same_sign_pair_sums(weights[name]).max() <= PAIR_LIMIT
        assert np.abs(weights[name]).max() > 64  # more than 7 bits
    # a 3x3 Conv's K may run channels innermost or outermost: the limit holds in both orders
    conv = next(n for n in limited.model.graph.node if n.name == "spatial")
    dq = next(n for n in limited.model.graph.node if conv.input[1] in n.output)
    spatial = next(numpy_helper.to_array(i) for i in limited.model.graph.initializer if i.name == dq.input[0])
    assert _same_sign_pair_sums(spatial.transpose(0, 2, 3, 1).reshape(32, -1)).max() <= PAIR_LIMIT

    for sample in held:  # the fused integer kernels compute what the QDQ graph says: no saturation
        fused, reference = run(limited.model, sample)[0], run(limited.model, sample, optimize=False)[0]
        np.testing.assert_allclose(fused, reference, atol=0.02 * np.abs(reference).max())
        assert not np.allclose(run(plain.model, sample)[0], fused)  # (the weights differ from 7-bit ones)


def test_pair_limited_weights_are_closer_to_fp32_than_7_bit():
    cin = 64
    model = _pointwise_model(cin, 32, seed=5, head=False)
    calib, held = _samples(cin, 16, seed=6), _samples(cin, 6, seed=7)
    # bias correction off: it would cancel most of the weights' rounding error on this one layer
    seven_bit = Recipe().with_overrides(search={"enabled": False},
                                        quantization={"reduce_range": True, "pair_limited_weights": False},
                                        recovery={"bias_correction": False})
    limited = onnxquant.quantize(model, calib, seven_bit.with_overrides(quantization={"pair_limited_weights": True}))
    plain = onnxquant.quantize(model, calib, seven_bit)

    def sqnr(quantized: onnx.ModelProto) -> float:
        ref = np.concatenate([run(model, s)[0] for s in held])
        got = np.concatenate([run(quantized, s)[0] for s in held])
        return float(10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()))

    assert sqnr(limited.model) > sqnr(plain.model) + 1.5  # dB (2.7 measured)


def test_pair_limited_weights_are_the_cpu_default_for_7_bit_recipes_only():
    cin = 64
    model = _pointwise_model(cin, 32, seed=2)
    calib = _samples(cin, 16, seed=3)
    as_given = Recipe().with_overrides(search={"enabled": False})
    assert as_given.quantization.pair_limited_weights is None
    assert "pair_limited_weights" not in as_given.to_json()  # the default is not stamped

    def weights_over_64(recipe: Recipe) -> int:
        q = _weights(onnxquant.quantize(model, calib, recipe).model)["pointwise"]
        return int((np.abs(q) > 64).sum())

    assert weights_over_64(as_given.with_overrides(quantization={"reduce_range": True})) > 0
    assert weights_over_64(as_given.with_overrides(quantization={"reduce_range": True, "pair_limited_weights": False})) == 0
    # full 8-bit weights (VNNI, ARM64): nothing to limit, the recipe's own weights
    full = as_given.with_overrides(quantization={"reduce_range": False})
    q = _weights(onnxquant.quantize(model, calib, full).model)["pointwise"]
    assert _same_sign_pair_sums(q).max() > PAIR_LIMIT
    assert '"pair_limited_weights":false' in as_given.with_overrides(
        quantization={"pair_limited_weights": False}).to_json()


def test_chosen_integers_follow_a_scale_raised_later():
    """Bias correction may raise a channel's weight scale so its corrected bias fits int32: the
    chosen integers of that channel then move to the coarser grid (only shrinking)."""
    from onnxquant.planner import QuantPlan, Selection
    from onnxquant.qparams import QParams

    ints = np.array([[100, 28, -5], [90, -90, 127]], np.int8)
    made_for = np.array([0.01, 0.02], np.float32)
    raised = np.array([0.01, 0.08], np.float32)
    key = ("layer", "w")
    plan = QuantPlan({}, {key: QParams(made_for, np.zeros(2, np.int8), "int8", 0)}, Selection(),
                     integers={key: (ints, made_for)})
    value = np.zeros((2, 3), np.float32)  # not read: the chosen integers are
    assert np.array_equal(plan.quantized_weight(key, value), ints)
    plan.weights[key] = QParams(raised, np.zeros(2, np.int8), "int8", 0)
    moved = plan.quantized_weight(key, value)
    assert np.array_equal(moved[0], ints[0])  # the channel whose scale stayed
    assert np.array_equal(moved[1], np.rint(ints[1].astype(float) / 4).astype(np.int8))


def test_chosen_scales_are_computed_once_per_weight_and_handed_out_as_copies():
    """The search's trials plan from one calibrated model: the same weight's scales are chosen
    once; a caller changing its scales (a raised bias scale) does not change the remembered ones."""
    from onnxquant.recovery import pair_limited

    rng = np.random.default_rng(7)
    stored = rng.normal(0, 0.5, (6, 8, 3, 3))
    weight = np.moveaxis(stored, 1, 0)  # (laid out as limit_pairs gives it: not contiguous)
    orders = ((1, 2, 0), (0, 1, 2))
    calls = []
    real = pair_limited.pair_limited_scales

    def counted(*args):
        calls.append(1)
        return real(*args)

    pair_limited.pair_limited_scales = counted
    try:
        first = pair_limited.chosen_scales(weight, orders)
        first *= 2  # the caller's copy
        second = pair_limited.chosen_scales(np.moveaxis(stored.copy(), 1, 0), orders)  # another trial's copy
        other = pair_limited.chosen_scales(np.moveaxis(stored * 1.5, 1, 0), orders)
    finally:
        pair_limited.pair_limited_scales = real
    assert len(calls) == 2  # the same bytes: chosen once; other bytes: chosen again
    assert second.tobytes() == real(weight, orders).tobytes()
    assert other.tobytes() == real(np.moveaxis(stored * 1.5, 1, 0), orders).tobytes()
