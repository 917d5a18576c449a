"""Fuse a BERT-like encoder's self-attention blocks into onnxruntime's ``Attention`` op.

An exported transformer spells each attention block as some twenty ops (three projections,
reshapes, transposes, two batched MatMuls, a scale, a mask, Softmax). Quantized as they are,
every one of them sits between Q/DQ pairs. onnxruntime's own BERT fusions
(``onnxruntime.transformers``, inside the onnxruntime wheel; ``onnxruntime-tools`` is gone)
turn the block into one ``com.microsoft.Attention``, which the quantizer then writes as
``QAttention``: one int8 GEMM for the three projections, the attention itself in one kernel.

What is fused, and what is not, was measured (README, "Transformer fusion"):
- Attention and Gelu: fused. The attention mask stays the raw 0/1 mask (exact for any padding;
  the faster sequence-length index assumes right padding).
- SkipLayerNormalization: not fused, and kept from being fused. onnxruntime's CPU kernel for it
  runs 3-5x slower than Add + LayerNormalization; its load-time optimizer fuses every residual
  ``Add -> LayerNormalization`` whose input shapes it knows. The residual Add is written as the
  identical ``Sum``, which that optimizer does not match.
- EmbedLayerNormalization: not fused. It reads the word-embedding table in float; unfused, the
  table's Gather is stored and looked up in 8 bits.

Static-shape exports (no dynamic axes): the Linear layers onnxruntime's simplifier flattened around
Gemms are written back as MatMul + Add first (``gemm_as_matmul``), and after the fusion the
remaining static 3-D MatMuls' biases get the activation's rank (``static_bias``), so that
onnxruntime's load-time MatMulAddFusion leaves the quantized MatMuls to its QDQ fusions.

Only the fusions change the graph, and only when at least one attention block fuses: any other
model is returned as it came, the same object, byte for byte.
"""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import onnx

from onnxquant.model_io import tensor_array
from onnxquant.passes.attention_mask import rewrite_padding_masks
from onnxquant.passes.declared_shapes import declared_shapes, infer_declared_shapes, static_inputs
from onnxquant.passes.gemm_as_matmul import gemm_as_matmul
from onnxquant.passes.node_index import NodeIndex
from onnxquant.passes.sdpa_attention import rewrite_sdpa_attention
from onnxquant.passes.static_bias import static_biases

MS_DOMAIN = "com.microsoft"


@dataclass
class TransformerFusion:
    """What the fusion did to one model."""

    attention: int = 0  # attention blocks fused into Attention
    gelu: int = 0  # Gelu / BiasGelu ops written
    residual_sums: int = 0  # residual Adds before a LayerNormalization written as Sum
    num_heads: int = 0
    hidden_size: int = 0
    unmatched: bool = False  # an encoder's shape was read, yet onnxruntime's fusions matched no block
    masks_rewritten: int = 0  # And/Where padding masks (torch.onnx dynamo) written in the form the fusion matches
    sdpa_rewritten: int = 0  # SDPA blocks (torch.onnx) written in the eager form the fusion matches
    sdpa_infinite_masks: int = 0  # of which their -inf padding mask written with float's lowest (TorchScript export)
    sdpa_declined: str = ""  # why SDPA blocks (a NaN guard after the Softmax) were not rewritten, if any were not
    sdpa_declined_blocks: int = 0  # how many were not
    unflattened_gemms: int = 0  # Reshape -> Gemm -> Reshape Linear layers (static shapes) written as MatMul + Add
    static_biases: int = 0  # biases of static-shape 3-D MatMuls given their rank (kept from MatMulAddFusion)
    static_skipped: str = ""  # why shape inference failed on a static-shape export (its passes skipped), if it did

    def warning(self) -> str | None:
        """SDPA blocks left unfused, fused blocks or not: a user exporting with transformers' defaults
        expects them fused, and they run several times slower unfused."""
        if not self.sdpa_declined_blocks:
            return None
        return (f"transformer fusion: {self.sdpa_declined_blocks} SDPA attention block(s) (torch.onnx: Q and K "
                f"scaled apart, a NaN guard after the Softmax) not rewritten for the fusion ({self.sdpa_declined}): "
                "they run as separate quantized MatMuls")

    def note(self) -> str | None:
        line = self._fusion_note()
        if not self.static_skipped:
            return line
        skipped = (f"static-shape passes (Gemm unflattening, static biases) skipped: onnx shape inference "
                   f"failed ({self.static_skipped})")
        return f"{line}; {skipped}" if line else f"transformer fusion: {skipped}"

    def _fusion_note(self) -> str | None:
        if self.unmatched:
            why = ("its SDPA attention not rewritten, see the warning" if self.sdpa_declined_blocks
                   else "a mask or layout other than BERT's export writes")
            return (f"transformer fusion: the graph reads as an encoder ({self.num_heads} heads, hidden size "
                    f"{self.hidden_size}), but onnxruntime's attention fusion matched none of its blocks ({why}): "
                    "attention runs as separate quantized MatMuls")
        if not self.attention:
            return None
        mask = (", its And/Where padding mask (torch.onnx) rewritten for the fusion"
                if self.masks_rewritten else "")
        if self.sdpa_rewritten:
            mask += f", {self.sdpa_rewritten} SDPA blocks written as eager attention"
        if self.sdpa_infinite_masks:
            mask += (f" ({self.sdpa_infinite_masks} of them with their -inf padding mask as the lowest finite float, "
                     "as the eager export's: outputs equal the export's except on an input whose tokens are all "
                     "padding, which now attends evenly to them where the export's NaN guard gave zero attention)")
        if self.unflattened_gemms or self.static_biases:
            mask += (f", static shapes: {self.unflattened_gemms} Reshape/Gemm/Reshape Linear layers as MatMul + Add, "
                     f"{self.static_biases} biases kept from onnxruntime's MatMul+Add->Gemm fusion")
        return (f"transformer fusion: {self.attention} attention blocks fused into Attention "
                f"({self.num_heads} heads, hidden size {self.hidden_size}{mask}), {self.gelu} Gelu; "
                f"{self.residual_sums} residual Adds kept from SkipLayerNormalization")


def _constant_ints(index: NodeIndex, name: str) -> list[int] | None:
    """The integer values of an initializer, or of a Concat of one-element initializers and
    runtime values (these read as 0: a dim the exporter computes from the input's shape)."""
    if name in index.inits:
        value = tensor_array(index.inits[name])
        return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" else None
    k = index.producer.get(name)
    if k is None or index.nodes[k].op_type != "Concat":
        return None
    values: list[int] = []
    for part in index.nodes[k].input:
        if part in index.inits:
            value = tensor_array(index.inits[part])
            if value.dtype.kind not in "iu":
                return None
            values.extend(int(v) for v in value.reshape(-1))
        else:
            values.append(0)  # a runtime dim (batch, sequence): one element per part, as exported
    return values


def _projection_width(index: NodeIndex, name: str) -> int | None:
    """Output width of the linear layer that produces ``name`` (MatMul, optionally + bias Add)."""
    k = index.producer.get(name)
    if k is not None and index.nodes[k].op_type == "Add":
        k = next((index.producer[i] for i in index.nodes[k].input
                  if i in index.producer and index.nodes[index.producer[i]].op_type == "MatMul"), None)
    if k is None or index.nodes[k].op_type != "MatMul" or len(index.nodes[k].input) < 2:
        return None
    weight = index.inits.get(index.nodes[k].input[1])
    return int(weight.dims[1]) if weight is not None and len(weight.dims) == 2 else None


def encoder_shape(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(num_heads, hidden_size) of a BERT-like encoder, read from its graph; None for other models.

    Each head split is a Reshape of a projection's output to (batch, sequence, heads, head_size);
    exporters write heads as a number or as -1, and batch and sequence as runtime values.
    """
    index = NodeIndex(model.graph)
    ops = {n.op_type for n in index.nodes}
    if "Softmax" not in ops or not ops & {"LayerNormalization", "ReduceMean"}:  # ReduceMean: LayerNorm before opset 17
        return None
    votes: Counter[tuple[int, int]] = Counter()
    for node in index.nodes:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = _constant_ints(index, node.input[1])
        if target is None or len(target) != 4 or target[3] <= 0:
            continue
        width = _projection_width(index, node.input[0])
        heads, head_size = target[2], target[3]
        if width is None or width % head_size:
            continue
        if heads <= 0:
            heads = width // head_size
        if heads * head_size == width and heads > 1:
            votes[(heads, width)] += 1
    if not votes:
        return None
    return votes.most_common(1)[0][0]


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.transformers logs through the root logger (warnings would reach stderr);
    library code prints nothing."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _fusion_options():
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    options.enable_embed_layer_norm = False
    options.enable_rotary_embeddings = False
    options.enable_qordered_matmul = False
    options.enable_shape_inference = False  # symbolic shape inference needs sympy; not needed here
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    return options


def residual_adds_as_sum(graph: onnx.GraphProto) -> int:
    """Write each Add of two activations whose only reader is a LayerNormalization as Sum.

    Exact (Sum of two tensors is their Add); onnxruntime's SkipLayerNormFusion matches Add only.
    """
    index = NodeIndex(graph)
    count = 0
    for node in index.nodes:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        if any(i in index.inits for i in node.input) or node.output[0] in index.outputs:
            continue
        reader = index.only_reader(node.output[0], "LayerNormalization")
        if reader is None:
            continue
        node.op_type = "Sum"
        count += 1
    return count


def fuse_transformer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, TransformerFusion]:
    """The model with its attention blocks fused, or ``model`` itself when it is not a BERT-like
    encoder (or nothing fused)."""
    shape = encoder_shape(model)
    if shape is None:
        return model, TransformerFusion()
    num_heads, hidden_size = shape
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    work = onnx.ModelProto()
    work.CopyFrom(model)
    shapes, failure = infer_declared_shapes(work)
    skipped = failure if failure and static_inputs(work) else ""  # (a static export: its passes need the shapes)
    unflattened = gemm_as_matmul(work, shapes)  # (static shapes: the optimizer's flattened Linear layers, back on 3-D)
    if unflattened:
        shapes = declared_shapes(work)  # (before the fusions: onnx infers no shape past a com.microsoft op)
    sdpa = rewrite_sdpa_attention(work, hidden_size // num_heads, shapes)
    declined = "; ".join(sorted(set(sdpa.declined)))
    masks = rewrite_padding_masks(work)
    with _quiet_logging():
        try:
            bert = BertOnnxModel(work, num_heads, hidden_size)
            bert.optimize(_fusion_options())
            bert.topological_sort()  # fused nodes are appended at the end of the node list
        except Exception:  # a pattern the fusions do not expect: quantize the graph as it is
            return model, TransformerFusion(num_heads=num_heads, hidden_size=hidden_size, unmatched=True,
                                            sdpa_declined=declined, static_skipped=skipped,
                                            sdpa_declined_blocks=len(sdpa.declined))
    ops = Counter(n.op_type for n in work.graph.node if n.domain == MS_DOMAIN)
    if not ops["Attention"]:
        return model, TransformerFusion(num_heads=num_heads, hidden_size=hidden_size, unmatched=True,
                                        sdpa_declined=declined, static_skipped=skipped,
                                        sdpa_declined_blocks=len(sdpa.declined))
    result = TransformerFusion(attention=ops["Attention"], gelu=ops["Gelu"] + ops["BiasGelu"] + ops["FastGelu"],
                               num_heads=num_heads, hidden_size=hidden_size, masks_rewritten=masks,
                               sdpa_rewritten=sdpa.rewritten, sdpa_infinite_masks=sdpa.infinite_masks,
                               sdpa_declined=declined,
                               sdpa_declined_blocks=len(sdpa.declined), static_skipped=skipped)
    result.residual_sums = residual_adds_as_sum(work.graph)
    result.unflattened_gemms = unflattened
    result.static_biases = static_biases(work, shapes)
    if not any(o.domain == MS_DOMAIN for o in work.opset_import):
        work.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return work, result
