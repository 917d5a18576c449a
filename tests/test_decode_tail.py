"""A detector's decode tail (boxes in pixels joined with sigmoid scores) stays float, with the head's last Convs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.decode_tail import HEAD_REASON, REASON, decode_tail_nodes, is_dfl_projection

SIDE = 96  # a 96 x 96 image at stride 8: 144 candidates, a detector's many (decode_tail.MIN_CANDIDATES)
CELLS, BINS, CLASSES = (SIDE // 8) ** 2, 16, 2


def _yolov8_head(raw: bool = False) -> onnx.ModelProto:
    """A YOLOv8-style detector in miniature: a stride-8 Conv body; box and class heads joined by a
    Concat (the box logits spanning tens of units), flattened and split again; the box side
    through the DFL (softmax over 16 bins, the fixed 0..15 projection), times the stride plus the
    anchor points (pixels, up to ~300), the class side through a Sigmoid; one Concat into (1, 4 + 2, 16).
    ``raw``: no box arithmetic: the box logits joined with the scores as they are (a raw head)."""
    rng = np.random.default_rng(0)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    ints = lambda name, a: numpy_helper.from_array(np.asarray(a, np.int64), name)  # noqa: E731
    anchors = np.tile((np.arange(CELLS) % (SIDE // 8) * 8 + 4.0), (4, 1))[None] * 3
    inits = [init("w_body", rng.normal(0, 0.3, (16, 3, 8, 8))), init("b_body", np.zeros(16)),
             init("w_box", rng.normal(0, 8.0, (4 * BINS, 16, 1, 1))), init("w_cls", rng.normal(0, 0.5, (CLASSES, 16, 1, 1))),
             init("b_cls", [-1.0, 0.5]), init("w_dfl", np.arange(BINS).reshape(1, BINS, 1, 1)),
             init("stride", [[[8.0]]]), init("anchors", anchors),
             ints("shape_bins", [1, 4, BINS, CELLS]), ints("shape_box", [1, 4, CELLS])]
    nodes = [helper.make_node("Conv", ["images", "w_body", "b_body"], ["f0"], name="body", strides=[8, 8]),
             helper.make_node("Relu", ["f0"], ["f"], name="relu"),
             helper.make_node("Conv", ["f", "w_box"], ["box_logits"], name="box_head"),
             helper.make_node("Conv", ["f", "w_cls", "b_cls"], ["cls_logits"], name="cls_head"),
             helper.make_node("Concat", ["box_logits", "cls_logits"], ["level"], name="level_join", axis=1),
             helper.make_node("Reshape", ["level", "shape_level"], ["level_flat"], name="level_reshape"),
             helper.make_node("Split", ["level_flat", "split_sizes"], ["box_flat", "cls_flat"], name="split", axis=1),
             helper.make_node("Sigmoid", ["cls_flat"], ["scores"], name="scores")]
    inits += [ints("shape_level", [1, 4 * BINS + CLASSES, CELLS]), ints("split_sizes", [4 * BINS, CLASSES])]
    if raw:
        nodes += [helper.make_node("Identity", ["box_flat"], ["boxes"], name="box_raw")]
        columns = 4 * BINS + CLASSES
    else:
        nodes += [helper.make_node("Reshape", ["box_flat", "shape_bins"], ["bins"], name="dfl_reshape"),
                  helper.make_node("Transpose", ["bins"], ["bins_t"], name="dfl_transpose", perm=[0, 2, 1, 3]),
                  helper.make_node("Softmax", ["bins_t"], ["probs"], name="dfl_softmax", axis=1),
                  helper.make_node("Conv", ["probs", "w_dfl"], ["dist"], name="dfl_conv"),
                  helper.make_node("Reshape", ["dist", "shape_box"], ["dist_flat"], name="dist_reshape"),
                  helper.make_node("Mul", ["dist_flat", "stride"], ["dist_px"], name="times_stride"),
                  helper.make_node("Add", ["dist_px", "anchors"], ["boxes"], name="plus_anchors")]
        columns = 4 + CLASSES
    nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["output0"], name="join", axis=1))
    graph = helper.make_graph(nodes, "yolo_head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, columns, CELLS])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_decode_tail_is_found_from_the_joining_concat_back_to_the_head_convs():
    tail = decode_tail_nodes(_yolov8_head())
    assert {n for n, r in tail.items() if r == REASON} == {
        "level_join", "level_reshape", "split", "scores", "dfl_reshape", "dfl_transpose", "dfl_softmax", "dfl_conv", "dist_reshape",
        "times_stride", "plus_anchors", "join"}
    assert {n for n, r in tail.items() if r == HEAD_REASON} == {"box_head", "cls_head"}  # read only by the tail
    model = _yolov8_head()
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    constants = {i.name: i for i in model.graph.initializer}
    assert is_dfl_projection(convs["dfl_conv"], constants) and not is_dfl_projection(convs["cls_head"], constants)


def test_a_raw_head_without_box_arithmetic_has_no_decode_tail():
    assert decode_tail_nodes(_yolov8_head(raw=True)) == {}


def test_class_scores_survive_int8_next_to_pixel_boxes():
    """One uint8 scale over the joined box and class logits leaves the class logits steps of a
    unit or so; kept float from the head's last Convs on, the scores stay within 0.03 of fp32's."""
    model = _yolov8_head()
    rng = np.random.default_rng(1)
    samples = [{"images": rng.uniform(0, 1, (1, 3, SIDE, SIDE)).astype(np.float32)} for _ in range(8)]
    result = onnxquant.quantize(model, samples)
    kept = {f.name for f in result.float_nodes}
    assert {"join", "level_join", "scores", "dfl_conv", "cls_head"} <= kept and "body" not in kept
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    held = [{"images": rng.uniform(0, 1, (1, 3, SIDE, SIDE)).astype(np.float32)} for _ in range(4)]
    for feed in held:
        ref, got = fp32.run(None, feed)[0], int8.run(None, feed)[0]
        assert np.abs(ref[:, 4:] - got[:, 4:]).max() < 0.03  # the scores (0.12 off with the logits' shared scale)
        assert np.abs(ref[:, :4] - got[:, :4]).max() < 16.0  # the boxes, within two strides


def test_a_regressor_joined_with_a_sigmoid_is_no_detector():
    """An age/gender model: a Gemm to a Sigmoid (gender) and a Gemm times 100 (age), joined by one
    Concat into (4, 2). Not a detector: no candidate axis, no anchor grid; nothing is kept float."""
    rng = np.random.default_rng(0)
    f = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [f("wg", rng.normal(0, .1, (256, 1))), f("bg", [0.1]), f("wa", rng.normal(0, .1, (256, 1))),
             f("ba", [0.3]), f("hundred", [100.0])]
    nodes = [helper.make_node("Gemm", ["h", "wg", "bg"], ["g1"], name="gender_fc"),
             helper.make_node("Sigmoid", ["g1"], ["gender"], name="gender_prob"),
             helper.make_node("Gemm", ["h", "wa", "ba"], ["a0"], name="age_fc"),
             helper.make_node("Mul", ["a0", "hundred"], ["age"], name="age_years"),
             helper.make_node("Concat", ["age", "gender"], ["out"], name="join", axis=1)]
    graph = helper.make_graph(nodes, "age_gender", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [4, 256])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 2])], inits)
    assert decode_tail_nodes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)) == {}


def test_a_silu_is_no_score():
    """SiLU, x * sigmoid(x), joined with anchor-grid arithmetic: no scores-only input, no tail."""
    from onnxquant.decode_tail import _joins_boxes_and_scores

    grid = numpy_helper.from_array(np.ones((1, 4, 200), np.float32), "grid")
    nodes = [helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
             helper.make_node("Mul", ["a", "s"], ["silu"], name="silu"),
             helper.make_node("Add", ["b", "grid"], ["boxes"], name="plus_grid"),
             helper.make_node("Concat", ["boxes", "silu"], ["out"], name="join", axis=1)]
    assert not _joins_boxes_and_scores(nodes, {"grid": grid})
    assert _joins_boxes_and_scores([nodes[0], *nodes[2:3], helper.make_node("Concat", ["boxes", "s"], ["out"], name="j")],
                                   {"grid": grid})
