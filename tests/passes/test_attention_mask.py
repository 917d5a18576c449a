"""The And/Where padding mask of torch.onnx's dynamo export, rewritten into the form onnxruntime's
attention fusion matches: equal outputs, and only where the condition really is the padding mask.

The masks are small graphs written here in the exporter's idiom (Range/Unsqueeze/GatherND/And);
tests/passes/test_transformer_fusion.py runs a whole dynamo-exported encoder.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxquant.passes.attention_mask import (CHECK_SHAPES, MAX_CHECK_LENGTH, MIN_TRIALS, _trial_masks, _trial_shapes,
                                             rewrite_padding_masks)
from onnxquant.passes.node_index import NodeIndex
from tests.conftest import run

MIN = np.finfo(np.float32).min


def _masked_scores(query_floor: int = 0, zero: float = 0.0, fill: float = float(MIN), readers: str = "Softmax",
                   causal: bool = False, window: int | None = None, lengths_from: str = "ids") -> onnx.ModelProto:
    """softmax(scores + Where(cond, zero, fill)) with cond = (q >= query_floor) & bool(mask[b, k]),
    built as torch.onnx's dynamo exporter builds it (GatherND of the bool mask at (batch, key)
    indices from Range); ``causal`` adds ``q >= k``, ``window`` a local-attention band ``|q - k| < window``.
    ``lengths_from``: batch and length from the Shape of "ids", of "embeddings" (a 5000-word table
    looked up with ids, as the TorchScript export reads them), or of the embeddings "reshaped" to a
    target computed from the ids' values."""
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array(query_floor, np.int64), "floor"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
        numpy_helper.from_array(np.array([3], np.int64), "ax3"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "ax01"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([-1], np.int64), "axm1"),
        numpy_helper.from_array(np.array(zero, np.float32), "zeros"),
        numpy_helper.from_array(np.array(fill, np.float32), "fill"),
    ]
    shaped = {"ids": "ids", "embeddings": "embedded", "reshaped": "reshaped"}[lengths_from]
    inits += [numpy_helper.from_array(np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32), "table"),
              numpy_helper.from_array(np.array([8], np.int64), "width")]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("ReduceMax", ["ids"], ["largest"], keepdims=0),
        helper.make_node("Mul", ["largest", "zero_i"], ["nothing"]),
        helper.make_node("Concat", ["ids_shape", "width"], ["target0"], axis=0),
        helper.make_node("Max", ["target0", "nothing"], ["target"]),  # (the same target, from ids' values)
        helper.make_node("Reshape", ["embedded", "target"], ["reshaped"]),
        helper.make_node("Shape", [shaped], ["b1"], start=0, end=1),
        helper.make_node("Squeeze", ["b1"], ["b"]),
        helper.make_node("Shape", [shaped], ["s1"], start=1, end=2),
        helper.make_node("Squeeze", ["s1"], ["s"]),
        helper.make_node("Cast", ["mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Range", ["zero_i", "b", "one_i"], ["batch_idx"]),
        helper.make_node("Range", ["zero_i", "s", "one_i"], ["pos"]),
        helper.make_node("Unsqueeze", ["batch_idx", "ax12"], ["bu"]),
        helper.make_node("Unsqueeze", ["bu", "ax3"], ["b4"]),  # (B,1,1,1)
        helper.make_node("Unsqueeze", ["pos", "ax01"], ["pu"]),
        helper.make_node("Unsqueeze", ["pu", "ax3"], ["q4"]),  # (1,1,S,1)
        helper.make_node("Unsqueeze", ["pu", "ax2"], ["k4"]),  # (1,1,1,S)
        helper.make_node("GreaterOrEqual", ["q4", "floor"], ["ge"]),
        helper.make_node("And", ["true", "ge"], ["valid_q"]),
        helper.make_node("Max", ["b4", "k4"], ["bk"]),
        helper.make_node("Shape", ["bk"], ["bk_shape"]),
        helper.make_node("Expand", ["b4", "bk_shape"], ["b_full"]),
        helper.make_node("Unsqueeze", ["b_full", "axm1"], ["b_idx"]),
        helper.make_node("Expand", ["k4", "bk_shape"], ["k_full"]),
        helper.make_node("Unsqueeze", ["k_full", "axm1"], ["k_idx"]),
        helper.make_node("Concat", ["b_idx", "k_idx"], ["idx"], axis=-1),
        helper.make_node("GatherND", ["mask_bool", "idx"], ["kept"]),
        helper.make_node("And", ["valid_q", "kept"], ["cond0"]),
    ]
    if window is not None:
        inits.append(numpy_helper.from_array(np.array(window, np.int64), "window"))
        nodes += [helper.make_node("Sub", ["q4", "k4"], ["offset"]),
                  helper.make_node("Abs", ["offset"], ["distance"]),
                  helper.make_node("Less", ["distance", "window"], ["near"]),
                  helper.make_node("And", ["cond0", "near"], ["cond0_windowed"])]
        cond0 = "cond0_windowed"
    else:
        cond0 = "cond0"
    if causal:
        nodes += [helper.make_node("GreaterOrEqual", ["q4", "k4"], ["causal"]),
                  helper.make_node("And", [cond0, "causal"], ["cond"])]
    else:
        nodes += [helper.make_node("Identity", [cond0], ["cond"])]
    nodes += [helper.make_node("Where", ["cond", "zeros", "fill"], ["bias"]),
              helper.make_node("Add", ["scores", "bias"], ["masked"]),
              helper.make_node(readers, ["masked"], ["probs"])]
    graph = helper.make_graph(
        nodes, "masked_scores",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 2, "S", "S"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 2, "S", "S"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _feeds(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for batch, length in ((1, 4), (2, 6), (3, 3)):
        mask = rng.integers(0, 2, (batch, length)).astype(np.int64)
        mask[:, 0] = 1  # (a row with every key masked is softmax over equal minima: fine, but not the point)
        out.append({"ids": np.zeros((batch, length), np.int64), "mask": mask,
                    "scores": rng.normal(size=(batch, 2, length, length)).astype(np.float32)})
    return out


def test_the_padding_mask_is_rewritten_with_equal_outputs():
    model = _masked_scores()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_padding_masks(rewritten) == 1
    onnx.checker.check_model(rewritten)
    add = next(n for n in rewritten.graph.node if n.op_type == "Add")
    where = next(n for n in rewritten.graph.node if n.output[0] in add.input and n.op_type == "Where")
    assert where.input[0] != "cond"  # the Add reads the new mask, Where(bool(1 - mask), min, 1 - mask)
    ops = Counter(n.op_type for n in rewritten.graph.node)
    assert ops["Where"] == 2 and ops["Sub"] == 1 and ops["Expand"] == 3
    for feed in _feeds():
        np.testing.assert_array_equal(run(rewritten, feed)[0], run(model, feed)[0])


def test_lengths_read_from_the_embeddings_shape_are_no_dependence():
    """The TorchScript export takes batch and length from the embeddings' Shape: the ids are looked
    up in a table, not read by the condition, and the table's 5000 rows are no length to check."""
    model = _masked_scores(lengths_from="embeddings")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_padding_masks(rewritten) == 1
    for feed in _feeds():
        np.testing.assert_array_equal(run(rewritten, feed)[0], run(model, feed)[0])


@pytest.mark.parametrize("change", [
    {"query_floor": 1},  # the first query row masked too: not a padding mask
    {"causal": True},  # a causal mask And-ed in
    {"zero": 0.5},  # a kept position is shifted, not left as it is
    {"fill": 1.0},  # "masked" positions raised
    {"readers": "Relu"},  # not added to scores read by a Softmax
    {"window": 16},  # a local-attention band wider than short sequences: only long ones tell it apart
    {"window": 5000},  # a band too wide to check by running it: left too
    {"lengths_from": "reshaped"},  # lengths from a shape the ids' values could set
])
def test_anything_else_is_left_as_it_is(change):
    model = _masked_scores(**change)
    before = model.SerializeToString()
    assert rewrite_padding_masks(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_a_mask_of_any_values_keeps_its_outputs(dtype):
    """The dynamo mask attends where ``bool(mask)``: an integer mask holding 2 or -1 (not only 0/1),
    and an int32 or bool mask input, give the same outputs rewritten."""
    model = _masked_scores()
    model.graph.input[1].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_padding_masks(rewritten) == 1
    rng = np.random.default_rng(7)
    for feed in _feeds(seed=3):
        values = feed["mask"] * rng.choice((1, 2, -1, 5), feed["mask"].shape)
        feed["mask"] = values.astype(dtype)
        np.testing.assert_array_equal(run(rewritten, feed)[0], run(model, feed)[0])


@pytest.mark.parametrize("shapes", ["one query", "rank-5 zero"])
def test_the_rewritten_mask_broadcasts_as_the_condition_did(shapes):
    """The condition is (batch, 1, sequence, sequence): added to scores of one query row it
    broadcasts them to every row, and a rank-5 zero adds a leading axis. The rewritten mask gives
    the scores the same shape."""
    model = _masked_scores()
    if shapes == "one query":
        model.graph.input[2].type.tensor_type.shape.dim[2].dim_value = 1
    else:
        zeros = next(i for i in model.graph.initializer if i.name == "zeros")
        zeros.CopyFrom(numpy_helper.from_array(np.zeros((1, 1, 1, 1, 1), np.float32), "zeros"))
        del model.graph.output[0].type.tensor_type.shape.dim[:]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    rewrite_padding_masks(rewritten)
    for feed in _feeds():
        if shapes == "one query":
            feed["scores"] = feed["scores"][:, :, :1]
        expected = run(model, feed)[0]
        got = run(rewritten, feed)[0]
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def _static_mask(first_key_only: bool, length: int = 6, full_expand: bool = False) -> onnx.ModelProto:
    """softmax(scores + Where(cond, 0, min)) on inputs of one declared shape (2, length), as a static-shape
    export writes it; cond is bool(mask) (expanded to its own shape, a constant holding ``length``,
    with ``full_expand``) or, wrongly, each row's first key broadcast over the row."""
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zeros"),
             numpy_helper.from_array(np.array(MIN, np.float32), "fill")]
    nodes = [helper.make_node("Cast", ["mask"], ["mask_bool"], to=TensorProto.BOOL)]
    kept = "mask_bool"
    if first_key_only or full_expand:
        inits.append(numpy_helper.from_array(np.array([2, length], np.int64), "full"))
    if first_key_only:
        inits += [numpy_helper.from_array(np.array([0], np.int64), "start"),
                  numpy_helper.from_array(np.array([1], np.int64), "end")]
        nodes += [helper.make_node("Slice", ["mask_bool", "start", "end", "end"], ["first"]),
                  helper.make_node("Expand", ["first", "full"], ["first_everywhere"])]
        kept = "first_everywhere"
    elif full_expand:
        nodes.append(helper.make_node("Expand", ["mask_bool", "full"], ["mask_full"]))
        kept = "mask_full"
    nodes += [helper.make_node("Unsqueeze", [kept, "ax12"], ["cond"]),
              helper.make_node("Where", ["cond", "zeros", "fill"], ["bias"]),
              helper.make_node("Add", ["scores", "bias"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["probs"])]
    graph = helper.make_graph(
        nodes, "static_mask",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, [2, length]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 2, 6, length])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 2, 6, length])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_static_shape_mask_is_checked_at_its_declared_shape():
    """A static export's mask takes only its declared (2, 6): checked there, and rewritten."""
    model = _static_mask(first_key_only=False)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_padding_masks(rewritten) == 1
    rng = np.random.default_rng(3)
    for _ in range(3):
        mask = rng.integers(0, 2, (2, 6)).astype(np.int64)
        mask[:, 0] = 1
        feed = {"mask": mask, "scores": rng.normal(size=(2, 2, 6, 6)).astype(np.float32)}
        np.testing.assert_array_equal(run(rewritten, feed)[0], run(model, feed)[0])


def test_a_static_batch_of_two_does_not_make_the_check_blind():
    """With batch 2 fixed, forcing the first row kept and the last padded on every check would leave
    no random row: a condition reading each row's first key only would pass. Rows are forced on
    every other check only, so some trial mask has a row its first key does not describe."""
    index = NodeIndex(_static_mask(first_key_only=True).graph)
    shapes = _trial_shapes(index, list(range(4)), (2, 6))
    assert shapes == [(2, 6)] * MIN_TRIALS
    masks = [bits for bits, _ in _trial_masks(np.random.default_rng(0), shapes)]
    assert any(not np.array_equal(row, np.full_like(row, row[0])) for bits in masks for row in bits)
    model = _static_mask(first_key_only=True)
    before = model.SerializeToString()
    assert rewrite_padding_masks(model) == 0
    assert model.SerializeToString() == before


def test_a_dynamic_mask_has_its_rows_forced_on_every_other_trial():
    """Free dims: every other CHECK_SHAPES trial keeps a first row all kept and a last all padded
    (the all-one and all-zero rows the check promises); the rest are random in every row, so that
    a condition reading another sample's row (``padding & padding[0:1]``) cannot pass on forced rows."""
    masks = list(_trial_masks(np.random.default_rng(0), list(CHECK_SHAPES)))
    assert [bits.shape for bits, _ in masks] == list(CHECK_SHAPES)
    for trial, (bits, values) in enumerate(masks):
        if trial % 2 == 0:
            assert bits[0].all() and (bits.shape[0] == 1 or not bits[-1].any())
        np.testing.assert_array_equal(values != 0, bits.astype(bool))
    assert any(not bits[0].all() for trial, (bits, _) in enumerate(masks) if trial % 2)


def test_a_static_mask_longer_than_the_check_limit_is_checked_at_its_length():
    """A static export of more than MAX_CHECK_LENGTH tokens holds that length in its constants; it
    is the only length the graph takes, so it is checked there rather than declined."""
    length = MAX_CHECK_LENGTH + 6
    model = _static_mask(first_key_only=False, length=length, full_expand=True)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_padding_masks(rewritten) == 1
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 2, (2, length)).astype(np.int64)
    mask[:, 0] = 1
    feed = {"mask": mask, "scores": rng.normal(size=(2, 2, 6, length)).astype(np.float32)}
    np.testing.assert_array_equal(run(rewritten, feed)[0], run(model, feed)[0])
