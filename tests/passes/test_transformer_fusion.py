"""Transformer fusion before quantizing: a BERT encoder's attention blocks become Attention, then
QAttention; the float model keeps its outputs; other models are left byte for byte.

The encoder is a small randomly initialised BertModel exported the way models/minilm.py exports
all-MiniLM-L6-v2 (HF transformers, torch.onnx, free batch and sequence dims); the last test runs
the real MiniLM.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.tiny import tiny_attention, tiny_mbconv
from onnxquant.passes.prepare import prepare_model
from onnxquant.passes.transformer_fusion import encoder_shape, fuse_transformer, residual_adds_as_sum
from onnxquant.planner import select
from onnxquant.errors import UsageError
from onnxquant.recipe import Recipe, recipe_for_target, recipe_from_dict
from tests.conftest import run, write_npz

LAYERS, HEADS, HIDDEN, VOCAB = 2, 4, 32, 100


def _export_tiny_bert(path: Path, opset: int = 17, dynamo: bool = False, attention: str = "eager") -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
                                     max_position_embeddings=64, attn_implementation=attention)
    encoder = transformers.BertModel(config, add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(1, 8, dtype=torch.int64)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(Hidden(encoder), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=names, output_names=["hidden"],
                          dynamic_axes={**{n: dyn for n in names}, "hidden": dyn}, opset_version=opset, dynamo=dynamo)
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> onnx.ModelProto:
    return onnx.load(str(_export_tiny_bert(tmp_path_factory.mktemp("bert") / "bert.onnx")))


def _samples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Token batches of two sentences, padded on the right or (every other) on the left."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        length = 6 + i % 5
        ids = rng.integers(1, VOCAB, (2, length))
        mask = np.ones((2, length), np.int64)
        pad = 1 + i % 3
        if i % 2:
            mask[1, :pad] = 0
        else:
            mask[1, length - pad:] = 0
        ids[mask == 0] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_encoder_shape_is_read_from_the_head_split(bert):
    prepared, _ = prepare_model(bert)
    assert encoder_shape(prepared) == (HEADS, HIDDEN)


def test_attention_blocks_fuse_and_outputs_stay_equal(bert):
    prepared, _ = prepare_model(bert)
    fused, report = fuse_transformer(prepared)
    ops = _ops(fused)
    assert report.attention == ops["Attention"] == LAYERS and (report.num_heads, report.hidden_size) == (HEADS, HIDDEN)
    assert ops["Softmax"] == 0 and ops["MatMul"] == 3 * LAYERS  # output projection and the two FFN layers
    # Not fused: SkipLayerNormalization (slow CPU kernel) and EmbedLayerNormalization (float table).
    assert ops["SkipLayerNormalization"] == 0 and ops["EmbedLayerNormalization"] == 0
    # Each residual Add into a LayerNormalization (two per layer, and the embeddings') is a Sum.
    assert report.residual_sums == ops["Sum"] == 2 * LAYERS + 1
    onnx.checker.check_model(fused)
    for sample in _samples(6):
        np.testing.assert_allclose(run(fused, sample)[0], run(bert, sample)[0], rtol=1e-4, atol=2e-5)


@pytest.fixture(scope="module")
def bert_dynamo(tmp_path_factory) -> onnx.ModelProto:
    """The same encoder as torch.onnx's default (dynamo) exporter writes it: the padding mask as
    Range/GatherND/And/Where, the attention scale as Mul."""
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("bert-dynamo") / "bert-dynamo.onnx"
    return onnx.load(str(_export_tiny_bert(path, opset=18, dynamo=True)))


def test_a_dynamo_export_fuses_and_keeps_its_outputs(bert_dynamo):
    """Its And/Where mask is rewritten into a form onnxruntime's attention fusion matches."""
    assert {"And", "Where", "GatherND"} <= set(_ops(bert_dynamo))
    fused, report = prepare_model(bert_dynamo, transformer=True)
    ops = _ops(fused)
    assert report.transformer.attention == ops["Attention"] == LAYERS and report.transformer.masks_rewritten == 1
    assert ops["Softmax"] == 0 and "And" not in ops and "GatherND" not in ops
    assert any("padding mask (torch.onnx) rewritten" in note for note in report.notes)
    for sample in _samples(6):
        np.testing.assert_allclose(run(fused, sample)[0], run(bert_dynamo, sample)[0], rtol=1e-4, atol=2e-5)
        # the export attends wherever the mask is non-zero: a mask holding 2 or -1 there too
        sample["attention_mask"] = sample["attention_mask"] * np.array([2, -1])[:, None]
        np.testing.assert_allclose(run(fused, sample)[0], run(bert_dynamo, sample)[0], rtol=1e-4, atol=2e-5)


def test_an_encoder_whose_attention_does_not_fuse_is_said(bert_dynamo):
    """A dynamo export whose mask is no padding mask (Where(cond, 0.5, min): not the idiom) is
    not rewritten; onnxruntime's fusion matches no block. The graph is quantized as it is, and the
    summary says why attention is not one kernel."""
    model = onnx.ModelProto()
    model.CopyFrom(bert_dynamo)
    where = next(n for n in model.graph.node if n.op_type == "Where")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    where.input[1] = "half"
    prepared, report = prepare_model(model, transformer=True)
    assert report.transformer.unmatched and report.transformer.attention == 0
    assert any("matched none of its blocks" in note and f"{HEADS} heads" in note for note in report.notes)
    assert "Attention" not in _ops(prepared)


def test_an_opset_14_export_with_layernorm_spelled_out_fuses_too(tmp_path: Path):
    old = onnx.load(str(_export_tiny_bert(tmp_path / "bert14.onnx", opset=14)))
    assert "LayerNormalization" not in _ops(old)  # ReduceMean, Sub, Pow, Sqrt, Div...
    fused, report = prepare_model(old, transformer=True)
    assert report.transformer.attention == LAYERS and _ops(fused)["LayerNormalization"] == 2 * LAYERS + 1
    for sample in _samples(3):
        np.testing.assert_allclose(run(fused, sample)[0], run(old, sample)[0], rtol=1e-4, atol=2e-5)


def test_onnxruntime_keeps_add_and_layernorm_apart(bert, tmp_path: Path):
    """Its load-time optimizer would fuse SkipLayerNormalization (3-5x slower on CPU) from Add."""
    from tests.conftest import optimized_op_types

    fused, _ = fuse_transformer(prepare_model(bert)[0])
    assert "SkipLayerNormalization" not in optimized_op_types(fused, tmp_path)


def test_prepare_fuses_only_when_asked(bert):
    plain, report = prepare_model(bert)
    assert not report.transformer.attention and "Attention" not in _ops(plain)
    fused, report = prepare_model(bert, transformer=True)
    assert report.transformer.attention == LAYERS and any("transformer fusion" in n for n in report.notes)


@pytest.mark.parametrize("build", [tiny_mbconv, tiny_attention], ids=["cnn", "attention-like"])
def test_other_models_are_left_byte_for_byte(build):
    model = build()
    assert fuse_transformer(model)[0] is model
    with_pass, report = prepare_model(model, transformer=True)
    without, _ = prepare_model(model)
    assert with_pass.SerializeToString() == without.SerializeToString() and not report.transformer.attention


def test_only_adds_of_two_activations_into_a_layernorm_become_sum():
    nodes = [onnx.helper.make_node("Add", ["a", "b"], ["r"], name="residual"),
             onnx.helper.make_node("LayerNormalization", ["r", "g", "beta"], ["y"], name="ln"),
             onnx.helper.make_node("Add", ["y", "bias"], ["z"], name="bias_add"),
             onnx.helper.make_node("LayerNormalization", ["z", "g", "beta"], ["out"], name="ln2")]
    vec = onnx.numpy_helper.from_array
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 4]) for n in "ab"],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        [vec(np.ones(4, np.float32), "g"), vec(np.zeros(4, np.float32), "beta"), vec(np.ones(4, np.float32), "bias")])
    assert residual_adds_as_sum(graph) == 1
    assert [n.op_type for n in graph.node] == ["Sum", "LayerNormalization", "Add", "LayerNormalization"]


def test_attention_is_quantized_for_the_cpu_target_only(bert):
    fused, _ = prepare_model(bert, transformer=True)
    from onnxquant.planner import node_names

    node_names(fused)
    attention = [n.name for n in fused.graph.node if n.op_type == "Attention"]
    cpu = select(fused, Recipe())
    assert all(cpu.quantized.get(name) == "Attention" for name in attention)
    assert all((name, n.input[1]) in cpu.weights for n in fused.graph.node if n.op_type == "Attention"
               for name in [n.name])
    npu = select(fused, recipe_for_target("openvino"))
    assert all("CPU target only" in npu.float_nodes[name][1] for name in attention)


def test_recipe_switch():
    assert Recipe().transformer_fusion
    assert not Recipe().with_overrides(quantization={"fuse_transformer": False}).transformer_fusion
    assert not recipe_for_target("qnn").transformer_fusion
    assert "fuse_transformer" not in Recipe().to_json()  # unset: the stamped recipe is unchanged
    assert not recipe_from_dict({"quantization": {"fuse_transformer": False}}).transformer_fusion
    with pytest.raises(UsageError, match="fuse_transformer"):
        recipe_from_dict({"quantization": {"fuse_transformer": "yes"}})


def test_quantized_encoder_runs_qattention_and_agrees(bert, tmp_path: Path):
    import onnxquant

    fused, _ = prepare_model(bert, transformer=True)
    calib = write_npz(tmp_path / "calib", _samples(16, seed=1))
    result = onnxquant.quantize(fused, calib, output=tmp_path / "bert.int8.onnx")
    ops = _ops(result.model)
    assert ops["QAttention"] == LAYERS and ops["Attention"] == 0
    # The fusion self-check counts them as integer kernels beside the output and FFN MatMuls.
    assert (result.fusion.quantized_layers, result.fusion.integer_layers) == (4 * LAYERS, 4 * LAYERS)
    # The QAttention reads the int8 weight directly: no DequantizeLinear is left in front of it.
    inits = {i.name: i for i in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type == "QAttention":
            assert inits[node.input[1]].data_type == onnx.TensorProto.INT8
            assert inits[node.input[4]].dims == [3 * HIDDEN]  # one scale per column of Q|K|V
    for sample in _samples(6, seed=2):
        ref, got = run(bert, sample)[0], run(tmp_path / "bert.int8.onnx", sample)[0]
        keep = sample["attention_mask"].astype(bool)  # padded positions are not compared
        a, b = ref[keep], got[keep]
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cosine.min() > 0.98


@pytest.mark.realmodel
def test_minilm_fused_keeps_its_embeddings_and_quantizes(tmp_path_factory):
    pytest.importorskip("torch")
    import onnxquant
    from benchmarks import metrics
    from tests.conftest import zoo_model

    work = tmp_path_factory.mktemp("minilm")
    model, calib, held = zoo_model("minilm", work)
    fused, report = prepare_model(onnx.load(str(model)), transformer=True)
    assert (report.transformer.attention, report.transformer.num_heads, report.transformer.hidden_size) == (6, 12, 384)
    samples = [dict(np.load(f)) for f in sorted(held.glob("*.npz"))]
    ref = [run(model, x)[0] for x in samples]
    same = metrics.embedding(ref, [run(fused, x)[0] for x in samples])
    assert same["cosine_min"] >= 0.99999
    result = onnxquant.quantize(fused, calib)
    assert _ops(result.model)["QAttention"] == 6
    agreement = metrics.embedding(ref, [run(result.model, x)[0] for x in samples])
    assert agreement["cosine"] > 0.993  # 0.9966 measured, unfused 0.9960


@pytest.mark.realmodel
def test_minilm_dynamo_export_fuses_as_the_classic_one(tmp_path_factory):
    """all-MiniLM-L6-v2 as torch.onnx exports it by default: its six attention blocks fuse (its
    And/Where mask rewritten) and the fused graph's embeddings are fp32's."""
    pytest.importorskip("onnxscript")
    from benchmarks import metrics
    from tests.conftest import zoo_model

    model, _, held = zoo_model("minilm-dynamo", tmp_path_factory.mktemp("minilm-dynamo"))
    fused, report = prepare_model(onnx.load(str(model)), transformer=True)
    assert (report.transformer.attention, report.transformer.masks_rewritten) == (6, 1)
    assert (report.transformer.num_heads, report.transformer.hidden_size) == (12, 384)
    samples = [dict(np.load(f)) for f in sorted(held.glob("*.npz"))][:16]
    same = metrics.embedding([run(model, x)[0] for x in samples], [run(fused, x)[0] for x in samples])
    assert same["cosine_min"] >= 0.99999


@pytest.mark.realmodel
def test_minilm_static_shape_export_fuses_and_quantizes(tmp_path_factory):
    """all-MiniLM-L6-v2 exported by dynamo with SDPA and no dynamic axes (1 x 128): reshape targets and
    mask indices are constants, onnxruntime's optimizer flattens its FFN Linears around Gemms. Its
    six blocks fuse, the fused graph's embeddings are fp32's, and quantized every layer runs an
    integer kernel (no MatMul turned into a float Gemm at load time)."""
    pytest.importorskip("onnxscript")
    import onnxquant
    from benchmarks import metrics
    from onnxquant.fusion_check import check_fusion
    from tests.conftest import zoo_model

    model, calib, held = zoo_model("minilm-sdpa-static", tmp_path_factory.mktemp("minilm-sdpa-static"))
    fused, report = prepare_model(onnx.load(str(model)), transformer=True)
    fusion = report.transformer
    assert (fusion.attention, fusion.sdpa_rewritten, fusion.masks_rewritten) == (6, 6, 1)
    assert (fusion.unflattened_gemms, fusion.static_biases) == (12, 12)  # FFN Linears; FFN and attention outputs
    samples = [dict(np.load(f)) for f in sorted(held.glob("*.npz"))]
    ref = [run(model, x)[0] for x in samples]
    same = metrics.embedding(ref[:16], [run(fused, x)[0] for x in samples[:16]])
    assert same["cosine_min"] >= 0.99999
    result = onnxquant.quantize(model, calib)
    assert _ops(result.model)["QAttention"] == 6
    kernels = check_fusion(result.model)
    assert (kernels.quantized_layers, kernels.integer_layers) == (24, 24) and not kernels.float_islands
    agreement = metrics.embedding(ref, [run(result.model, x)[0] for x in samples])
    assert agreement["cosine"] >= 0.995  # 0.9986 measured (min 0.9971); main: see README, static shapes


def _with_static_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for value in static.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, (2, 8)):
            dim.dim_value = size
    return static


@pytest.mark.parametrize("static", [True, False])
def test_failed_shape_inference_on_a_static_export_is_said(bert, monkeypatch, static):
    """Shape inference failing on a static-shape export skips its passes (nothing declared): the note
    says so, and why. On free dims they would not apply, and nothing is said."""
    from onnxquant.passes import declared_shapes

    def fails(model, max_elements):
        raise ValueError("cannot infer this graph\nsecond line")

    model = prepare_model(_with_static_inputs(bert) if static else bert)[0]
    monkeypatch.setattr(declared_shapes, "skeleton", fails)
    _, fusion = fuse_transformer(model)
    assert fusion.attention == LAYERS  # the fusion itself needs no declared shapes
    assert (fusion.unflattened_gemms, fusion.static_biases) == (0, 0)
    if static:
        assert fusion.static_skipped == "ValueError: cannot infer this graph"
        assert fusion.note().endswith("; static-shape passes (Gemm unflattening, static biases) skipped: "
                                      "onnx shape inference failed (ValueError: cannot infer this graph)")
    else:
        assert fusion.static_skipped == "" and "skipped" not in fusion.note()


def test_a_static_export_whose_shapes_are_inferred_says_nothing_skipped(bert):
    _, fusion = fuse_transformer(prepare_model(_with_static_inputs(bert))[0])
    assert (fusion.unflattened_gemms, fusion.static_biases) == (2 * LAYERS, 2 * LAYERS)  # (the passes ran)
    assert fusion.static_skipped == "" and "skipped" not in fusion.note()
