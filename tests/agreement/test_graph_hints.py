from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxquant.agreement import detection_pairs, output_agreements
from onnxquant.agreement.graph_hints import graph_hints
from onnxquant.mixed_precision import Holdout


def _sigmoid_head(through: str = "Identity") -> onnx.ModelProto:
    """x (N, 3) -> Gemm -> Sigmoid -> ``through`` -> p (N, 1): a yes/no probability."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [0.5, -1.0, 2.0])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["s"])]
    if through == "Reshape":
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])
        nodes.append(helper.make_node("Reshape", ["s", "shape"], ["p"]))
        inits = [w, shape]
    else:
        nodes.append(helper.make_node(through, ["s"], ["p"]))
        inits = [w]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _if_head() -> onnx.ModelProto:
    """openWakeWord's shape: a Sigmoid score; an If on score >= 0.5 runs a second Sigmoid network in
    its then-branch and passes the score through an Identity in its else-branch."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [0.5, -1.0, 2.0])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    then = helper.make_graph([helper.make_node("Mul", ["s", "s"], ["t"]), helper.make_node("Sigmoid", ["t"], ["p2"])],
                             "then", [], [helper.make_tensor_value_info("p2", TensorProto.FLOAT, [1, 1])])
    other = helper.make_graph([helper.make_node("Identity", ["s"], ["p1"])], "else", [],
                              [helper.make_tensor_value_info("p1", TensorProto.FLOAT, [1, 1])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("ReduceMax", ["s"], ["m"], keepdims=0),
             helper.make_node("GreaterOrEqual", ["m", "half"], ["c"]),
             helper.make_node("If", ["c"], ["p"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "oww", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])], [w, half])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _loop_decoder(steps: int = 12, vocab: int = 6) -> onnx.ModelProto:
    """SLANet's shape: a Loop whose body makes one cell box (4) and one token distribution (vocab)
    a step as scan outputs; outside, transposed to (N, steps, 4) boxes and (N, steps, vocab) probabilities."""
    wb = helper.make_tensor("wb", TensorProto.FLOAT, [3, 4], list(np.linspace(0.1, 1.2, 12)))
    wt = helper.make_tensor("wt", TensorProto.FLOAT, [3, vocab], list(np.linspace(-1, 1, 3 * vocab)))
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Tanh", ["h_in"], ["h_out"]),
         helper.make_node("MatMul", ["h_out", "wb"], ["b_lin"]), helper.make_node("Sigmoid", ["b_lin"], ["box"]),
         helper.make_node("MatMul", ["h_out", "wt"], ["logit"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", vocab])])
    n = helper.make_tensor("n", TensorProto.INT64, [], [steps])
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("Loop", ["n", "true", "x"], ["h", "boxes_t", "logits_t"], body=body),
             helper.make_node("Transpose", ["boxes_t"], ["boxes"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["logits_t"], ["lt"], perm=[1, 0, 2]),
             helper.make_node("Softmax", ["lt"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", steps, 4]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", steps, vocab])],
                              [wb, wt, n, true])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_sigmoid_outputs_are_hinted_binary_through_value_keeping_ops():
    for through in ("Identity", "Reshape", "Flatten", "Squeeze", "ReduceMean"):  # silero-vad: a mean of sigmoids
        assert graph_hints(_sigmoid_head(through)) == {"p": "binary"}, through
    assert graph_hints(_sigmoid_head("Relu")) == {}  # a Relu after the Sigmoid: no longer a probability


def test_if_branches_both_ending_in_sigmoids_are_binary():
    assert graph_hints(_if_head()) == {"p": "binary"}


def test_loop_outputs_are_per_step_and_not_paired_as_detections():
    model = _loop_decoder()
    onnx.checker.check_model(model, full_check=True)
    assert graph_hints(model) == {"boxes": "per_step", "probs": "per_step"}
    boxes, probs = _run(model, np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32))
    values = {"boxes": boxes, "probs": probs}
    assert detection_pairs(values) == {"boxes": "probs"}  # what the values alone say: the misreading
    assert detection_pairs(values, hints=graph_hints(model)) == {}
    # the user can still say they are detections
    assert detection_pairs(values, {"boxes": "detection", "probs": "detection"}, graph_hints(model)) == {"boxes": "probs"}
    agreements = output_agreements(["boxes", "probs"], [boxes, probs], {"x": np.zeros((2, 3), np.float32)},
                                   hints=graph_hints(model))
    for name, value in values.items():
        agreements[name].begin(value)
    assert agreements["probs"].kind == "sequence" and agreements["boxes"].kind == "regression"


def test_holdout_reads_the_model_hints_and_scores_a_sigmoid_output_by_its_decisions():
    model = _sigmoid_head()
    xs = [np.array([[v, 0.0, 0.0]], np.float32) for v in np.linspace(-4, 4, 10)]
    held = Holdout.from_samples(model, [{"x": x} for x in xs], agreement="fine")
    assert held.hints == {"p": "binary"}
    from onnxquant.mixed_precision import score_outputs

    same = score_outputs([list(r) for r in held.references], held)
    assert same.drop == 0.0
    flipped = [[1.0 - r[0], r[1]] for r in held.references]  # every decision flipped, z unchanged
    m = score_outputs(flipped, held)
    assert m.scores["p"] == 0.0 and m.drop == 1.0 and any("decision agreement" in s for s in m.misses)


def test_output_kinds_the_user_gives_quantize_reach_the_search_scoring():
    from onnxquant.pipeline.run_data import RunData
    from onnxquant.mixed_precision import score_outputs
    from onnxquant.recipe import recipe_for_target

    model = _sigmoid_head()
    samples = [{"x": np.array([[v, 0.0, 0.0]], np.float32)} for v in np.linspace(-4, 4, 10)]
    held = RunData(calib_data=samples, output_kinds={"p": "regression"}).held_out(model, recipe_for_target("cpu"))
    assert held.kinds == {"p": "regression"} and held.hints == {"p": "binary"}
    flipped = [[r[0].copy(), r[1]] for r in held.references]
    flipped[4][0] = 1 - flipped[4][0]  # 0.445 -> 0.555: one decision of ten flipped
    assert "decision agreement" not in " ".join(score_outputs(flipped, held).misses)  # regression, as the user said
    detected = RunData(calib_data=samples).held_out(model, recipe_for_target("cpu"))
    assert "decision agreement" in " ".join(score_outputs(flipped, detected).misses)


def test_a_pair_kept_apart_by_a_loop_is_said_and_naming_either_output_pairs_it():
    """A Loop-based NMS hands out its boxes as loop-carried values, which read as per-step as a
    decoder's: the pair is not made silently any more, and --output-kind on one name is enough."""
    model = _loop_decoder()
    hints = graph_hints(model)
    boxes, probs = _run(model, np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32))
    values = {"boxes": boxes, "probs": probs}
    from onnxquant.agreement.kinds import loop_refused_pairs

    assert loop_refused_pairs(values, hints=hints) == {"boxes": "probs"}
    agreements = output_agreements(["boxes", "probs"], [boxes, probs], hints=hints)
    assert agreements["boxes"].kind_hint == (
        "boxes and probs would pair as detections but come out of a Loop (or Scan), so they are read on their "
        "own: --output-kind boxes=detection --output-kind probs=detection if this is a detector")
    for named in ("boxes", "probs"):
        assert detection_pairs(values, {named: "detection"}, hints) == {"boxes": "probs"}, named
        assert loop_refused_pairs(values, {named: "detection"}, hints) == {}
        said = output_agreements(["boxes", "probs"], [boxes, probs], kinds={named: "detection"}, hints=hints)
        assert said["boxes"].scores_in == "probs" and said["boxes"].kind_hint is None
    assert loop_refused_pairs(values, {"boxes": "regression"}, hints) == {}  # the user said what it is


def _loop_nms() -> onnx.ModelProto:
    """A detector whose NMS is a Loop: the kept boxes are its loop-carried value; the scores a
    MatMul and a Sigmoid outside it (a layer for quantize)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["b_in"], ["b_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [1, 200, 4])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [1, 200, 4])])
    n = helper.make_tensor("n", TensorProto.INT64, [], [1])
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], list(np.linspace(-1, 1, 9)))
    nodes = [helper.make_node("Loop", ["n", "true", "raw"], ["boxes"], body=body),
             helper.make_node("MatMul", ["logits", "w"], ["lw"]), helper.make_node("Sigmoid", ["lw"], ["scores"])]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 200, 4]),
                                             helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 200, 3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 200, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 200, 3])], [n, true, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_validate_and_quantize_say_a_pair_a_loop_keeps_apart(tmp_path):
    from onnxquant.api import quantize
    from onnxquant.validate import validate

    model = _loop_nms()
    assert graph_hints(model)["boxes"] == "per_step"
    path = tmp_path / "nms.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    samples = [{"raw": np.abs(rng.normal(size=(1, 200, 4)) * 100).astype(np.float32),
                "logits": rng.normal(size=(1, 200, 3)).astype(np.float32)} for _ in range(8)]
    note = "output 'boxes': boxes and scores would pair as detections but come out of a Loop"
    report = validate(path, path, samples, latency_runs=1).to_dict()["providers"][0]
    assert any(n.startswith(note) for n in report["notes"])
    result = quantize(path, samples, output=tmp_path / "q.onnx")
    assert sum(n.startswith(note) for n in result.notes) == 1
