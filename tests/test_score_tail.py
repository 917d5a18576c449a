"""A score head's tail (after a Gemm/MatMul to a few values a sample) stays float: its scores are
not clipped to the range the calibration samples gave."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.recipe import recipe_for_target
from onnxquant.score_tail import MAX_SCORES, REASON, score_tail_nodes

FEATURES, HIDDEN = 16, 32
# integer kernels whatever this host's cost estimate says of so small a model (its float compute
# would quantize no activation: nothing to clip)
INTEGER = recipe_for_target("cpu").with_overrides(quantization={"integer_compute": True}, search={"enabled": False})


def _scorer(scores: int = 1) -> onnx.ModelProto:
    """PLCMOS v2's end in miniature: Gemm + LeakyRelu, a Gemm to ``scores`` logits, Squeeze (one
    score) or Softmax (several), Sigmoid, times 4, plus 1 (a MOS between 1 and 5)."""
    rng = np.random.default_rng(0)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [init("w1", rng.normal(0, 0.3, (HIDDEN, FEATURES))), init("b1", np.zeros(HIDDEN)),
             init("w2", rng.normal(0, 0.3, (scores, HIDDEN))), init("b2", np.zeros(scores)),
             init("four", 4.0), init("one", 1.0)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h0"], name="dense1", transB=1),
             helper.make_node("LeakyRelu", ["h0"], ["h"], name="act", alpha=0.1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["logit"], name="dense2", transB=1)]
    if scores == 1:
        inits.append(numpy_helper.from_array(np.asarray([1], np.int64), "axes"))
        nodes.append(helper.make_node("Squeeze", ["logit", "axes"], ["squeezed"], name="squeeze"))
        out_shape: list[int] = [1]
    else:
        nodes.append(helper.make_node("Softmax", ["logit"], ["squeezed"], name="softmax", axis=1))
        out_shape = [1, scores]
    nodes += [helper.make_node("Sigmoid", ["squeezed"], ["p"], name="sigmoid"),
              helper.make_node("Mul", ["p", "four"], ["p4"], name="times4"),
              helper.make_node("Add", ["p4", "one"], ["mos"], name="plus1")]
    graph = helper.make_graph(nodes, "scorer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
                              [helper.make_tensor_value_info("mos", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_the_arithmetic_after_a_one_score_gemm_is_its_tail():
    assert score_tail_nodes(_scorer()) == dict.fromkeys(["plus1", "sigmoid", "squeeze", "times4"], REASON)


def test_a_head_with_many_outputs_has_no_score_tail():
    assert score_tail_nodes(_scorer(MAX_SCORES + 1)) == {}
    assert set(score_tail_nodes(_scorer(MAX_SCORES))) == {"plus1", "sigmoid", "softmax", "times4"}


def _quantized_on_low_scores(model: onnx.ModelProto, rng: np.random.Generator):
    """``model`` quantized on the lower half of 400 random inputs' scores and tried on the top 10
    (a better clip than any calibration saw): the result, how far the held-out scores lie above
    the calibrated ones, and each held-out score's error."""
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pool = [rng.normal(0, 1, (1, FEATURES)).astype(np.float32) for _ in range(400)]
    mos = np.array([fp32.run(None, {"x": x})[0].item() for x in pool])
    order = np.argsort(mos)
    calib = [{"x": pool[k]} for k in order[:200:4]]
    held = [{"x": pool[k]} for k in order[-10:]]
    result = onnxquant.quantize(model, calib, INTEGER)
    int8 = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    errors = [abs(int8.run(None, f)[0].item() - fp32.run(None, f)[0].item()) for f in held]
    return result, float(mos[order[-10:]].min() - mos[order[199]]), errors


def test_scores_beyond_the_calibrated_range_are_not_clipped():
    result, gap, errors = _quantized_on_low_scores(_scorer(), np.random.default_rng(1))
    assert gap > 0.3  # the held-out scores lie well above the calibrated ones
    assert max(errors) < 0.1, errors  # clipped at the calibrated top they would be off by the gap
    assert "sigmoid" in {f.name for f in result.float_nodes}


def test_a_head_output_an_int8_layer_also_reads_leaves_the_tail_unclipped():
    """The logit feeds the tail and a quantized Gemm outside it: the Gemm reads it through Q/DQ,
    the tail the float logit (through the DQ it would be capped at the calibrated top)."""
    model = _scorer()
    rng = np.random.default_rng(2)
    model.graph.initializer.extend([numpy_helper.from_array(rng.normal(0, 0.3, (4, 1)).astype(np.float32), "w3"),
                                    numpy_helper.from_array(np.zeros(4, np.float32), "b3")])
    model.graph.node.append(helper.make_node("Gemm", ["logit", "w3", "b3"], ["aux"], name="aux_gemm", transB=1))
    model.graph.output.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, [1, 4]))
    assert set(score_tail_nodes(model)) == {"plus1", "sigmoid", "squeeze", "times4"}
    result, gap, errors = _quantized_on_low_scores(model, rng)
    assert gap > 0.3
    assert max(errors) < 0.1, errors
    squeeze = next(n for n in result.model.graph.node if n.name == "squeeze")
    assert squeeze.input[0] == "logit"
    aux_gemm = next(n for n in result.model.graph.node if n.name == "aux_gemm")
    producers = {o: n.op_type for n in result.model.graph.node for o in n.output}
    assert producers[aux_gemm.input[0]] == "DequantizeLinear"
