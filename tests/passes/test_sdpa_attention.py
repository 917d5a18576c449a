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


def test_a_minus_infinity_mask_is_declined_and_said(bert_sdpa):
    """With -inf masked scores a fully masked row is NaN until the guard zeroes it, which the fused
    op does not do: the rewrite is declined, the encoder is quantized unfused, a warning says why."""
    model = _minus_infinity_mask(bert_sdpa)
    result = rewrite_sdpa_attention(_copy(prepare_model(model)[0]), HEAD_SIZE)
    assert result.rewritten == 0 and len(result.declined) == LAYERS
    assert all("not a Where of finite constants" in reason for reason in result.declined)
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
