"""SDPA attention as torch.onnx's dynamo exporter writes it (transformers' default attention):
rewritten into the eager form, so that onnxruntime's attention fusion matches it, with the
encoder's outputs unchanged; blocks whose rewrite would not be exact are declined and said.

The encoder is the small BertModel of test_transformer_fusion.py with attn_implementation="sdpa".
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from onnx import TensorProto, helper, numpy_helper

from onnxquant.passes.node_index import NodeIndex
from onnxquant.passes.prepare import prepare_model
from onnxquant.passes.sdpa_attention import rewrite_sdpa_attention
from tests.conftest import run
from tests.passes.test_transformer_fusion import HEADS, HIDDEN, LAYERS, _export_tiny_bert, _samples

HEAD_SIZE = HIDDEN // HEADS


@pytest.fixture(scope="module")
def bert_sdpa(tmp_path_factory) -> onnx.ModelProto:
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("bert-sdpa") / "bert-sdpa.onnx"
    return onnx.load(str(_export_tiny_bert(path, opset=18, dynamo=True, attention="sdpa")))


@pytest.fixture(scope="module")
def prepared(bert_sdpa) -> onnx.ModelProto:
    """The export as prepare leaves it before the fusion (simplified, not fused)."""
    return prepare_model(bert_sdpa)[0]


def _samples_with_empty_rows() -> list[dict[str, np.ndarray]]:
    """Padded batches, and batches with an all-zero mask row (a fully masked query row)."""
    samples = _samples(6)
    for sample in samples[:3]:
        sample = {k: v.copy() for k, v in sample.items()}
        sample["attention_mask"][0, :] = 0
        samples.append(sample)
    return samples


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return work


def test_the_export_has_the_sdpa_idiom(prepared):
    """What the pass is for: the NaN guard after each Softmax, Q and K each scaled by a Mul."""
    ops = _ops(prepared)
    assert ops["IsNaN"] == ops["Softmax"] == LAYERS
    assert ops["Mul"] >= 2 * LAYERS


def test_rewrite_writes_eager_attention_with_the_same_outputs(prepared):
    work = _copy(prepared)
    result = rewrite_sdpa_attention(work, HEAD_SIZE)
    assert (result.rewritten, result.declined) == (LAYERS, [])
    ops = _ops(work)
    assert "IsNaN" not in ops and ops["Softmax"] == LAYERS
    onnx.checker.check_model(work)
    # each Softmax reads Add(Mul(MatMul(Q, Transpose(K)), 1/sqrt(head size)), mask)
    index = NodeIndex(work.graph)
    for node in index.nodes:
        if node.op_type == "Softmax":
            add = index.nodes[index.producer[node.input[0]]]
            mul = next(index.nodes[index.producer[i]] for i in add.input
                       if i in index.producer and index.nodes[index.producer[i]].op_type == "Mul")
            scale = onnx.numpy_helper.to_array(index.inits[mul.input[1]])
            np.testing.assert_allclose(scale, 1 / np.sqrt(HEAD_SIZE), rtol=1e-6)  # (Q's scale times K's)
            matmul = index.nodes[index.producer[mul.input[0]]]
            assert index.nodes[index.producer[matmul.input[1]]].op_type == "Transpose"
    for sample in _samples_with_empty_rows():
        np.testing.assert_allclose(run(work, sample)[0], run(prepared, sample)[0], rtol=1e-5, atol=1e-6)


def test_an_sdpa_export_fuses_and_keeps_its_outputs(bert_sdpa):
    """Fails without the rewrite: onnxruntime's fusion matches none of the SDPA blocks."""
    fused, report = prepare_model(bert_sdpa, transformer=True)
    ops = _ops(fused)
    assert report.transformer.attention == ops["Attention"] == LAYERS
    assert report.transformer.sdpa_rewritten == LAYERS and report.transformer.masks_rewritten == 1
    assert ops["Softmax"] == 0 and "IsNaN" not in ops
    assert any(f"{LAYERS} SDPA blocks written as eager attention" in note for note in report.notes)
    onnx.checker.check_model(fused)
    for sample in _samples_with_empty_rows():
        np.testing.assert_allclose(run(fused, sample)[0], run(bert_sdpa, sample)[0], rtol=1e-4, atol=2e-5)


def _mask_where(model: onnx.ModelProto) -> onnx.NodeProto:
    index = NodeIndex(model.graph)
    softmax = next(n for n in index.nodes if n.op_type == "Softmax")
    add = index.nodes[index.producer[softmax.input[0]]]
    return next(index.nodes[index.producer[i]] for i in add.input
                if i in index.producer and index.nodes[index.producer[i]].op_type == "Where")


def _minus_infinity_mask(bert_sdpa: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(bert_sdpa)
    where = _mask_where(model)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"))
    where.input[2] = "minus_inf"
    return model


def _condition_reading_ids(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its mask's condition And-ed with ``input_ids != 0``: equal to the padding mask on
    samples whose padding holds id 0, but it reads the ids, so it is no padding mask."""
    where = _mask_where(model)
    names = [f"{where.input[0]}_{b}" for b in ("zero_id", "pad_id", "real_id", "kept")]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), names[0]))
    model.graph.node.insert(list(model.graph.node).index(where), helper.make_node("And", [where.input[0], names[2]], [names[3]]))
    model.graph.node.insert(0, helper.make_node("Not", [names[1]], [names[2]]))
    model.graph.node.insert(0, helper.make_node("Equal", ["input_ids", names[0]], [names[1]]))
    where.input[0] = names[3]
    return model


def test_a_minus_infinity_padding_mask_is_rewritten_and_said(bert_sdpa):
    """A -inf padding mask (the TorchScript export's) is written with float32's lowest value: outputs
    equal on every batch whose rows keep a key; the note says what changes for an all-padding input."""
    model = _minus_infinity_mask(bert_sdpa)
    fused, report = prepare_model(model, transformer=True)
    assert (report.transformer.attention, report.transformer.sdpa_infinite_masks) == (LAYERS, LAYERS)
    assert not report.warnings
    assert any("-inf padding mask as the lowest finite float" in note and "all padding" in note for note in report.notes)
    for sample in _samples(6):
        np.testing.assert_allclose(run(fused, sample)[0], run(model, sample)[0], rtol=1e-4, atol=2e-5)


def test_a_minus_infinity_mask_that_is_no_padding_mask_is_declined_and_said(bert_sdpa):
    """With -inf masked scores a fully masked row is NaN until the guard zeroes it, which the fused
    op does not do: unless the mask is the padding mask (only an all-padding input has such rows)
    the rewrite is declined, the encoder is quantized unfused, a warning says why."""
    model = _condition_reading_ids(_minus_infinity_mask(bert_sdpa))
    result = rewrite_sdpa_attention(_copy(prepare_model(model)[0]), HEAD_SIZE)
    assert result.rewritten == 0 and len(result.declined) == LAYERS
    assert all("-inf mask is not a padding mask" in reason for reason in result.declined)
    fused, report = prepare_model(model, transformer=True)
    assert report.transformer.unmatched and report.transformer.attention == 0
    assert _ops(fused)["IsNaN"] == LAYERS
    assert any("matched none of its blocks (its SDPA attention not rewritten" in note for note in report.notes)
    assert len(report.warnings) == 1
    assert f"{LAYERS} SDPA attention block(s)" in report.warnings[0] and "-inf mask" in report.warnings[0]


def _with_other_first_q_scale(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose first attention block scales Q by 0.3, not the fused op's 1/sqrt(head size)."""
    work = _copy(model)
    index = NodeIndex(work.graph)
    softmax = next(n for n in index.nodes if n.op_type == "Softmax")
    add = index.nodes[index.producer[softmax.input[0]]]
    matmul = next(index.nodes[index.producer[i]] for i in add.input
                  if i in index.producer and index.nodes[index.producer[i]].op_type == "MatMul")
    mul_q = index.nodes[index.producer[matmul.input[0]]]
    work.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.3, np.float32), "other_scale"))
    mul_q.input[1] = "other_scale"
    return work


def test_a_declined_block_among_fused_ones_is_a_warning_in_the_quantize_summary(bert_sdpa, tmp_path):
    """One block's scale changed: the other blocks fuse, and the summary still warns of the one left."""
    from onnxquant.api import quantize
    from onnxquant.cli.quantize import quantize_summary
    from tests.conftest import write_npz

    model = _with_other_first_q_scale(bert_sdpa)
    path = tmp_path / "one-other-scale.onnx"
    onnx.save(model, str(path))
    result = quantize(path, write_npz(tmp_path / "calib", _samples(8)), output=tmp_path / "int8.onnx")
    warnings = [w for w in result.warnings if "SDPA" in w]
    assert len(warnings) == 1 and "1 SDPA attention block(s)" in warnings[0] and "is not 1/sqrt(head size" in warnings[0]
    assert any(f"{LAYERS - 1} attention blocks fused" in n for n in result.notes)
    summary = quantize_summary(result.to_dict())
    assert "warning: transformer fusion: 1 SDPA attention block(s)" in summary


def test_a_scale_other_than_the_fused_ops_is_declined(prepared):
    """The fused Attention applies 1/sqrt(head size): another scale on Q is not rewritten."""
    work = _with_other_first_q_scale(prepared)
    result = rewrite_sdpa_attention(work, HEAD_SIZE)
    assert result.rewritten == LAYERS - 1
    assert len(result.declined) == 1 and "is not 1/sqrt(head size" in result.declined[0]


def _swapped_k_reshape(prepared: onnx.ModelProto) -> onnx.ModelProto:
    """``prepared`` with its first block's last K Reshape to (batch, heads, sequence, size): no transpose."""
    work = _copy(prepared)
    index = NodeIndex(work.graph)
    softmax = next(n for n in index.nodes if n.op_type == "Softmax")
    add = index.nodes[index.producer[softmax.input[0]]]
    matmul = next(index.nodes[index.producer[i]] for i in add.input
                  if i in index.producer and index.nodes[index.producer[i]].op_type == "MatMul")
    mul_k = index.nodes[index.producer[matmul.input[1]]]
    reshape = index.nodes[index.producer[mul_k.input[0]]]
    assert reshape.op_type == "Reshape"
    concat = index.nodes[index.producer[reshape.input[1]]]
    assert concat.op_type == "Concat" and len(concat.input) == 3
    concat.input[1], concat.input[2] = concat.input[2], concat.input[1]
    return work


def test_a_k_path_that_is_no_transpose_is_declined(prepared):
    """K's reshapes are checked by running them: a last Reshape to (batch, heads, sequence, size)
    (its shape's last two parts swapped) is no transpose of K, and is not rewritten."""
    work = _swapped_k_reshape(prepared)
    result = rewrite_sdpa_attention(work, HEAD_SIZE)
    assert result.rewritten == LAYERS - 1
    assert result.declined == ["K's path is not a transpose of its head split's last two axes"]


def test_a_static_export_without_declared_shapes_says_so(prepared):
    """On a static-shape export (every input's dims fixed) whose head split's shape inference did not
    declare, K's path is checked on other shapes than the one it holds: the reason says the shape
    was missing, not that the path is no transpose."""
    work = _swapped_k_reshape(prepared)
    for value in work.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, (2, 8)):
            dim.dim_value = size
    result = rewrite_sdpa_attention(work, HEAD_SIZE, known={})
    assert result.declined == ["K's head split's shape not declared (shape inference), so its path was checked "
                               "on other shapes"]


def test_an_eager_export_is_left_to_the_mask_rewrite(tmp_path):
    """No NaN guard, nothing to do: the eager dynamo export is not touched (C's pass fuses it)."""
    pytest.importorskip("onnxscript")
    eager = prepare_model(onnx.load(str(_export_tiny_bert(tmp_path / "eager.onnx", opset=18, dynamo=True))))[0]
    work = _copy(eager)
    result = rewrite_sdpa_attention(work, HEAD_SIZE)
    assert (result.rewritten, result.declined) == (0, [])
    assert work.SerializeToString() == eager.SerializeToString()


@pytest.mark.realmodel
def test_minilm_sdpa_export_fuses_as_the_eager_one(tmp_path_factory):
    """all-MiniLM-L6-v2 as transformers 5 and torch.onnx export it by default (SDPA attention,
    dynamo): its six blocks are rewritten and fuse, and the fused graph's embeddings are fp32's."""
    pytest.importorskip("onnxscript")
    from benchmarks import metrics
    from tests.conftest import zoo_model

    model, _, held = zoo_model("minilm-sdpa", tmp_path_factory.mktemp("minilm-sdpa"))
    fused, report = prepare_model(onnx.load(str(model)), transformer=True)
    assert (report.transformer.attention, report.transformer.sdpa_rewritten, report.transformer.masks_rewritten) == (6, 6, 1)
    samples = [dict(np.load(f)) for f in sorted(held.glob("*.npz"))][:16]
    same = metrics.embedding([run(model, x)[0] for x in samples], [run(fused, x)[0] for x in samples])
    assert same["cosine_min"] >= 0.99999



@pytest.mark.realmodel
def test_minilm_torchscript_sdpa_export_fuses_and_quantizes(tmp_path_factory):
    """all-MiniLM-L6-v2 with SDPA attention through the TorchScript exporter (``dynamo=False``): a
    -inf padding mask, K transposed by one Transpose, the context reshaped to its own shape. Its six
    blocks fuse, the fused graph's embeddings are fp32's, and quantized every layer is an integer
    kernel with 6 QAttention (main: declined, 36 MatMuls, 6 float Mul round trips)."""
    import onnxquant
    from benchmarks import metrics
    from onnxquant.fusion_check import check_fusion
    from tests.conftest import zoo_model

    model, calib, held = zoo_model("minilm-sdpa-ts", tmp_path_factory.mktemp("minilm-sdpa-ts"))
    fused, report = prepare_model(onnx.load(str(model)), transformer=True)
    fusion = report.transformer
    assert (fusion.attention, fusion.sdpa_rewritten, fusion.sdpa_infinite_masks, fusion.masks_rewritten) == (6, 6, 6, 1)
    assert not report.warnings
    samples = [dict(np.load(f)) for f in sorted(held.glob("*.npz"))]
    ref = [run(model, x)[0] for x in samples]
    same = metrics.embedding(ref[:16], [run(fused, x)[0] for x in samples[:16]])
    assert same["cosine_min"] >= 0.99999
    result = onnxquant.quantize(model, calib)
    assert _ops(result.model)["QAttention"] == 6 and not [w for w in result.warnings if "SDPA" in w]
    kernels = check_fusion(result.model)
    assert (kernels.quantized_layers, kernels.integer_layers) == (24, 24) and not kernels.float_islands
    agreement = metrics.embedding(ref, [run(result.model, x)[0] for x in samples])
    assert agreement["cosine"] >= 0.995  # 0.9986 measured (min 0.9971); main 0.9983 unfused

def _export_sdpa_block(kind: str) -> onnx.ModelProto:
    """One SDPA attention (4 heads of 8) as torch.onnx's dynamo exporter writes it, batch and sequence
    dynamic, with a boolean padding mask (the form with the NaN guard) and one variation."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    heads, size = 4, 8
    kv_heads = 1 if kind == "one_kv_head" else 2 if kind == "grouped" else heads

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.q = torch.nn.Linear(heads * size, heads * size)
            self.k = torch.nn.Linear(heads * size, kv_heads * size)
            self.v = torch.nn.Linear(heads * size, kv_heads * size)

        def forward(self, x, m):
            b, s, _ = x.shape
            q = self.q(x).view(b, s, heads, size).transpose(1, 2)
            k = self.k(x).view(b, s, kv_heads, size).transpose(1, 2)
            v = self.v(x).view(b, s, kv_heads, size).transpose(1, 2)
            mask = m[:, None, None, :].bool()
            extra = {}
            if kind == "causal":
                mask = mask & torch.ones(s, s, dtype=torch.bool).tril()[None, None]
            elif kind == "grouped":
                extra["enable_gqa"] = True
            elif kind == "dropout":
                extra["dropout_p"] = 0.1  # exported as a Dropout, identity at inference
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)
            return out.transpose(1, 2).reshape(b, s, heads * size)

    x, m = torch.randn(2, 5, heads * size), torch.ones(2, 5, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    program = torch.onnx.export(Block().eval(), (x, m), dynamo=True, input_names=["x", "m"], output_names=["y"],
                                dynamic_shapes=(dims, dims), opset_version=18)
    return program.model_proto


@pytest.mark.parametrize("kind, rewritten", [("causal", 1), ("one_kv_head", 1), ("dropout", 1), ("grouped", 0)])
def test_sdpa_variants_are_rewritten_exactly_or_declined(kind, rewritten):
    """A causal mask (fully masked rows among its padded ones), one K/V head broadcast over Q's heads,
    and a Dropout after the guard are rewritten with the same outputs, on batches and lengths other
    than the export's; grouped K/V heads (repeated by an Expand) are declined."""
    model = _export_sdpa_block(kind)
    prepared = prepare_model(model)[0]
    assert _ops(prepared)["IsNaN"] == 1
    work = _copy(prepared)
    result = rewrite_sdpa_attention(work, 8)
    assert result.rewritten == rewritten and len(result.declined) == 1 - rewritten
    assert ("IsNaN" in _ops(work)) == (not rewritten)
    rng = np.random.default_rng(1)
    for batch, length in [(1, 1), (2, 5), (3, 9), (2, 17)]:
        mask = rng.integers(0, 2, (batch, length))
        mask[0] = 0  # a fully masked row
        feed = {"x": rng.standard_normal((batch, length, 32)).astype(np.float32), "m": mask}
        np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-5, atol=1e-6)


def _torchscript_sdpa_block(condition: str = "padding", length_from: str = "q_tokens") -> onnx.ModelProto:
    """One SDPA attention (4 heads of 8) in the TorchScript exporter's spelling, written here:
    ``Mul(Transpose(Q, 0213), c) @ Mul(Transpose(K, 0231), c) + Where(cond, 0, -inf) -> Softmax ->
    Where(IsNaN(p), 0, p) @ V``, then the identity Reshape of the context to (batch, -1, length,
    size) from Shapes, batch and sequence free. ``condition``: "padding" (``bool(m)[:, None, None, :]``)
    or "causal" (that and ``key <= query``, fully masking a left-padded row's first queries).
    ``length_from``: the tensor whose dim 1 the context Reshape's target reads (the export: Q's tokens)."""
    heads, size = 4, 8
    width = heads * size
    rng = np.random.default_rng(0)
    c = np.float32(np.sqrt(1 / np.sqrt(size)))
    inits = [numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32) * 0.3, f"w{p}") for p in "qkv"]
    inits += [
        numpy_helper.from_array(np.array([0, 0, heads, size], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array(c, np.float32), "c"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array(1, np.int64), "i1"),
        numpy_helper.from_array(np.array(3, np.int64), "i3"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([0, 0, width], np.int64), "tokens_shape"),
    ]
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_flat"]),
                  helper.make_node("Reshape", [f"{p}_flat", "heads_shape"], [f"{p}_tokens"]),
                  helper.make_node("Transpose", [f"{p}_tokens"], [f"{p}_heads"], perm=perm)]
    nodes += [
        helper.make_node("Mul", ["q_heads", "c"], ["q_scaled"]),
        helper.make_node("Mul", ["k_heads", "c"], ["k_scaled"]),
        helper.make_node("MatMul", ["q_scaled", "k_scaled"], ["scores"]),
        helper.make_node("Cast", ["m"], ["m_bool"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["m_bool", "axes12"], ["padding"]),
    ]
    if condition == "causal":
        nodes += [helper.make_node("Shape", ["m"], ["m_shape"]),
                  helper.make_node("Gather", ["m_shape", "i1"], ["length"]),
                  helper.make_node("Range", ["i0", "length", "i1"], ["positions"]),
                  helper.make_node("Unsqueeze", ["positions", "axis0"], ["keys"]),
                  helper.make_node("Unsqueeze", ["positions", "minus_one"], ["queries"]),
                  helper.make_node("LessOrEqual", ["keys", "queries"], ["earlier"]),
                  helper.make_node("And", ["padding", "earlier"], ["cond"])]
    else:
        nodes += [helper.make_node("Identity", ["padding"], ["cond"])]
    nodes += [
        helper.make_node("Where", ["cond", "zero", "minus_inf"], ["mask"]),
        helper.make_node("Add", ["scores", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("IsNaN", ["probs"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "probs"], ["guarded"]),
        helper.make_node("MatMul", ["guarded", "v_heads"], ["context"]),
        # the exporter's reshape of the context to (batch, -1, length, size): the same shape
        helper.make_node("Shape", ["context"], ["context_shape"]),
        helper.make_node("Gather", ["context_shape", "i0"], ["batch"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Shape", [length_from], ["q_shape"]),
        helper.make_node("Gather", ["q_shape", "i1"], ["q_length"]),
        helper.make_node("Unsqueeze", ["q_length", "axis0"], ["q_length1"]),
        helper.make_node("Shape", ["v_heads"], ["v_shape"]),
        helper.make_node("Gather", ["v_shape", "i3"], ["v_size"]),
        helper.make_node("Unsqueeze", ["v_size", "axis0"], ["v_size1"]),
        helper.make_node("Concat", ["batch1", "minus_one", "q_length1", "v_size1"], ["context_target"], axis=0),
        helper.make_node("Reshape", ["context", "context_target"], ["context_same"]),
        helper.make_node("Transpose", ["context_same"], ["context_tokens"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_tokens", "tokens_shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "torchscript_sdpa",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", width]),
         helper.make_tensor_value_info("m", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _block_feeds(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 2, (batch, length))
    mask[np.arange(batch), rng.integers(0, length, batch)] = 1  # every row keeps a key
    return {"x": rng.standard_normal((batch, length, 32)).astype(np.float32), "m": mask}


def test_a_torchscript_block_with_a_minus_infinity_padding_mask_is_rewritten_exactly():
    """The -inf becomes float32's lowest value, the guard, the K transpose's Muls and the context's
    identity Reshape go; every row with a kept key gives the export's values. An all-padding row,
    NaN in the Softmax and zero after the guard, now attends evenly (as the eager export does)."""
    model = _torchscript_sdpa_block()
    work = _copy(model)
    result = rewrite_sdpa_attention(work, 8)
    assert (result.rewritten, result.infinite_masks, result.declined) == (1, 1, [])
    onnx.checker.check_model(work)
    ops = _ops(work)
    assert "IsNaN" not in ops and ops["Reshape"] == 4 and ops["Where"] == 1  # (3 head splits and the output's)
    index = NodeIndex(work.graph)
    where = next(n for n in index.nodes if n.op_type == "Where")
    assert numpy_helper.to_array(index.inits[where.input[2]]) == np.finfo(np.float32).min
    assert "minus_inf" not in {i for n in index.nodes for i in n.input}
    for batch, length in [(1, 1), (2, 5), (3, 9), (2, 17)]:
        feed = _block_feeds(batch, length, batch * length)
        np.testing.assert_allclose(run(work, feed)[0], run(model, feed)[0], rtol=1e-5, atol=1e-6)
    feed = _block_feeds(3, 6, 0)
    feed["m"][1] = 0
    ours, theirs = run(work, feed)[0], run(model, feed)[0]
    np.testing.assert_allclose(ours[[0, 2]], theirs[[0, 2]], rtol=1e-5, atol=1e-6)
    assert not theirs[1].any() and np.isfinite(ours[1]).all() and ours[1].any()


def test_a_context_reshape_read_from_the_keys_length_is_declined():
    """Its target reads K's length for the queries': the same in self-attention, but not the context's
    own shape for every input the check tries (keys one longer), so the block is left."""
    model = _torchscript_sdpa_block(length_from="k_tokens")
    result = rewrite_sdpa_attention(_copy(model), 8)
    assert result.rewritten == 0 and result.declined == ["the Reshape after its context is not checked to keep its shape"]


def test_a_torchscript_block_with_a_causal_minus_infinity_mask_is_declined():
    """Causal and left padding fully mask a kept row's first queries: the guard matters there."""
    model = _torchscript_sdpa_block("causal")
    work = _copy(model)
    result = rewrite_sdpa_attention(work, 8)
    assert result.rewritten == 0 and len(result.declined) == 1 and "-inf mask is not a padding mask" in result.declined[0]
    assert work.SerializeToString() == model.SerializeToString()


def test_a_torchscript_sdpa_export_fuses_and_keeps_its_outputs(tmp_path):
    """The small BertModel with SDPA attention through torch.onnx's TorchScript exporter: a -inf mask
    read from the embeddings' shape, K transposed by one Transpose, the context reshaped to its own
    shape. Its blocks fuse; the fused graph's outputs are the export's on padded batches."""
    export = onnx.load(str(_export_tiny_bert(tmp_path / "bert-sdpa-ts.onnx", attention="sdpa")))
    assert _ops(export)["IsNaN"] == LAYERS
    fused, report = prepare_model(export, transformer=True)
    ops = _ops(fused)
    fusion = report.transformer
    assert (fusion.attention, fusion.sdpa_rewritten, fusion.sdpa_infinite_masks) == (LAYERS, LAYERS, LAYERS)
    assert ops["Attention"] == LAYERS and "IsNaN" not in ops and not report.warnings
    for sample in _samples(6):
        np.testing.assert_allclose(run(fused, sample)[0], run(export, sample)[0], rtol=1e-4, atol=2e-5)
