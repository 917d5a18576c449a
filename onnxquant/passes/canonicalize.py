"""Rewrite converter quirks into the forms onnxruntime fuses into integer kernels (exactly).

Exporters other than PyTorch's write weighted layers in shapes onnxruntime's QDQ fusions do
not accept, and a layer left in such a shape runs as float between DequantizeLinear nodes
(slower than the fp32 model). Each rewrite here keeps the model's arithmetic (up to float32
rounding of one product) and leaves anything it does not recognise alone:

- Gemm bias ``C`` of shape (1, N) or a scalar (scikit-learn, Keras): stored as (N,);
- Gemm ``alpha``/``beta`` != 1 (Paddle, old TF converters): folded into ``B`` and ``C``;
- Gemm ``transA=1``: a Transpose of the activation before it;
- MatMul whose constant weight is the *left* operand, ``W @ X`` (TF/Keras, old PyTorch):
  computed as ``(X^T @ W^T)^T``, so the weight is on the right where the integer kernels want it.

- ReduceMean over the two spatial axes of an NCHW tensor (torch.onnx's dynamo exporter, TF
  converters): GlobalAveragePool (and a Reshape to (N, C) when it drops the axes), which
  onnxruntime runs as QLinearGlobalAveragePool instead of float between integer kernels;
- Sum of two tensors (Caffe2-era residual connections): Add, which onnxruntime runs as
  QLinearAdd; a Sum that feeds a LayerNormalization is left as it is (transformer_fusion.py
  writes those on purpose);
- Max (Min) of a tensor and a one-value constant (tf2onnx: ``tf.math.maximum(x, -0.4)`` after a
  LeakyRelu in Google's speech_embedding): Clip with that lower (upper) bound, the same values,
  which onnxruntime drops into the int8 output of the op before it (it has no integer Max);
- a weight behind Cast (fp16 storage), Transpose, Reshape or Identity of an initializer: stored
  as the float32 initializer the layer reads (onnxruntime's simplifier does this too; this pass
  covers ``--no-simplify`` and models with external data, which skip the simplifier).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import iter_graphs, tensor_array
from onnxquant.passes.names import fresh_name
from onnxquant.passes.gemm_bias import channel_bias
from onnxquant.passes.node_index import NodeIndex, attributes
from onnxquant.shapes import known_elem_types, known_ranks

FLOAT = onnx.TensorProto.FLOAT
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class CanonicalizeReport:
    folded_weights: int = 0  # Cast/Transpose/Reshape/Identity of an initializer, stored folded
    gemm_biases: int = 0  # (1, N) or scalar Gemm biases stored as (N,)
    gemm_scales: int = 0  # Gemm alpha/beta folded into the weight and bias
    gemm_transposes: int = 0  # Gemm transA=1: the activation transposed by a Transpose before it
    left_matmuls: int = 0  # W @ X rewritten as (X^T @ W^T)^T
    global_means: int = 0  # ReduceMean over H and W written as GlobalAveragePool
    sums: int = 0  # two-input Sum written as Add
    clips: int = 0  # Max/Min with a one-value constant written as Clip

    def notes(self) -> list[str]:
        out = []
        if self.folded_weights:
            out.append(f"{self.folded_weights} weight(s) behind Cast/Transpose/Reshape stored as float32 initializers")
        if self.gemm_biases:
            out.append(f"{self.gemm_biases} Gemm bias(es) of shape (1, N) stored as (N,) for integer Gemm kernels")
        if self.gemm_scales:
            out.append(f"{self.gemm_scales} Gemm alpha/beta folded into weights and biases")
        if self.gemm_transposes:
            out.append(f"{self.gemm_transposes} Gemm transA written as a Transpose of the input")
        if self.left_matmuls:
            out.append(f"{self.left_matmuls} MatMul(s) with the weight on the left turned to put the weight on the right")
        if self.sums:
            out.append(f"{self.sums} two-input Sum(s) written as Add (an integer kernel)")
        if self.clips:
            out.append(f"{self.clips} Max/Min(s) with a constant bound written as Clip (absorbed by integer kernels)")
        if self.global_means:
            out.append(f"{self.global_means} ReduceMean(s) over height and width written as GlobalAveragePool "
                       "(an integer kernel)")
        return out


class _Initializers:
    """The graph's initializers by name; a tensor read by several nodes is copied before it is changed."""

    def __init__(self, graph: onnx.GraphProto, index: NodeIndex) -> None:
        self.graph = graph
        self.index = index
        self.by_name = {i.name: i for i in graph.initializer}
        self.taken = set(self.by_name) | {o for n in graph.node for o in [*n.input, *n.output]}

    def is_float(self, name: str) -> bool:
        init = self.by_name.get(name)
        return init is not None and init.data_type == FLOAT

    def value(self, name: str) -> np.ndarray:
        return tensor_array(self.by_name[name])

    def put(self, name: str, value: np.ndarray, shared: bool) -> str:
        """Store ``value`` under ``name``, or under a fresh name when others read ``name``."""
        if shared:
            name = self.fresh(f"{name}_canonical")
            self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
            self.by_name[name] = self.graph.initializer[-1]
            return name
        self.by_name[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def fresh(self, base: str) -> str:
        return fresh_name(self.taken, base)


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value != 1.0:
        node.attribute.append(helper.make_attribute(name, value))


def _gemm(node: onnx.NodeProto, inits: _Initializers, report: CanonicalizeReport) -> None:
    attrs = attributes(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    b = node.input[1] if len(node.input) > 1 else ""
    c = node.input[2] if len(node.input) > 2 else ""
    has_c = bool(c)
    if (alpha != 1.0 or beta != 1.0) and inits.is_float(b) and (not has_c or inits.is_float(c)):
        if alpha != 1.0:
            node.input[1] = inits.put(b, inits.value(b) * np.float32(alpha), inits.index.uses(b) > 1)
        if has_c and beta != 1.0:
            node.input[2] = inits.put(c, inits.value(c) * np.float32(beta), inits.index.uses(c) > 1)
        _set_attr(node, "alpha", 1.0)
        _set_attr(node, "beta", 1.0)
        report.gemm_scales += 1
    if not has_c or not inits.is_float(node.input[2]) or not inits.is_float(node.input[1]):
        return
    c = node.input[2]
    bias = inits.value(c)
    weight_shape = tuple(inits.by_name[node.input[1]].dims)
    if len(weight_shape) != 2:
        return
    n = weight_shape[0] if attrs.get("transB", 0) else weight_shape[1]
    if bias.ndim == 1 and bias.shape[0] == n:
        return  # already what the integer kernels take
    flat = channel_bias(bias, n)
    if flat is None:
        return  # a per-row bias (M, N) or (M, 1) is not a channel bias
    node.input[2] = inits.put(c, flat, inits.index.uses(c) > 1)
    report.gemm_biases += 1


def _left_matmul(position: int, inits: _Initializers, ranks: dict[str, int],
                 rewritten: dict[int, list[onnx.NodeProto]], report: CanonicalizeReport) -> None:
    node = inits.index.nodes[position]
    w, x = node.input[0], node.input[1]
    if not inits.is_float(w) or w == x or x in inits.by_name or len(inits.by_name[w].dims) != 2:
        return
    rank = ranks.get(x)
    if rank is None or rank < 2:
        return
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    weight_t = inits.put(w, np.ascontiguousarray(inits.value(w).T), shared=True)
    x_t = inits.fresh(f"{x}_transposed")
    y_t = inits.fresh(f"{node.output[0]}_transposed")
    name = node.name or f"MatMul_{position}"
    rewritten[position] = [
        helper.make_node("Transpose", [x], [x_t], name=inits.fresh(f"{name}_transpose_input"), perm=perm),
        helper.make_node("MatMul", [x_t, weight_t], [y_t], name=name),
        helper.make_node("Transpose", [y_t], [node.output[0]], name=inits.fresh(f"{name}_transpose_output"), perm=perm),
    ]
    report.left_matmuls += 1


def _untranspose_input(position: int, inits: _Initializers, rewritten: dict[int, list[onnx.NodeProto]],
                       report: CanonicalizeReport) -> None:
    """Gemm(transA=1): the activation transposed by a Transpose before it (integer Gemm kernels take
    no transA)."""
    node = inits.index.nodes[position]
    if not attributes(node).get("transA", 0) or node.input[0] in inits.by_name:
        return
    moved = inits.fresh(f"{node.input[0]}_transposed")
    transpose = helper.make_node("Transpose", [node.input[0]], [moved], perm=[1, 0],
                                 name=inits.fresh(f"{node.name or 'Gemm'}_transpose_input"))
    node.input[0] = moved
    kept = [a for a in node.attribute if a.name != "transA"]
    del node.attribute[:]
    node.attribute.extend(kept)
    rewritten[position] = [transpose, node]
    report.gemm_transposes += 1


def _global_mean(position: int, inits: _Initializers, ranks: dict[str, int], types: dict[str, int],
                 rewritten: dict[int, list[onnx.NodeProto]], report: CanonicalizeReport) -> None:
    """ReduceMean over axes (2, 3) of a 4-D tensor: GlobalAveragePool, the same mean, which
    onnxruntime has an integer kernel for (it has none for ReduceMean)."""
    node = inits.index.nodes[position]
    attrs = attributes(node)
    if ranks.get(node.input[0]) != 4 or len(node.output) != 1 or types.get(node.input[0]) not in _FLOAT_TYPES:
        return  # (GlobalAveragePool takes float tensors only; an integer mean stays a ReduceMean)
    if len(node.input) > 1 and node.input[1]:  # opset 18: the axes are an input
        if node.input[1] not in inits.by_name:
            return
        axes = [int(a) for a in tensor_array(inits.by_name[node.input[1]]).reshape(-1)]
    else:
        axes = list(attrs.get("axes", []))
    if sorted(a % 4 for a in axes) != [2, 3]:
        return
    name = node.name or f"ReduceMean_{position}"
    if attrs.get("keepdims", 1):
        rewritten[position] = [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=name)]
    else:
        pooled = inits.fresh(f"{node.output[0]}_pooled")
        shape = inits.fresh(f"{name}_shape")
        inits.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), shape))
        inits.by_name[shape] = inits.graph.initializer[-1]
        rewritten[position] = [
            helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=name),
            helper.make_node("Reshape", [pooled, shape], [node.output[0]], name=inits.fresh(f"{name}_flatten")),
        ]
    report.global_means += 1


# Clip takes its bounds as inputs from opset 11 (attributes before).
CLIP_INPUTS_OPSET = 11


def _bound_as_clip(position: int, inits: _Initializers, ranks: dict[str, int], types: dict[str, int],
                   rewritten: dict[int, list[onnx.NodeProto]], report: CanonicalizeReport) -> None:
    """Max(x, c) / Min(x, c) with ``c`` one float32 value of no higher rank than ``x``: Clip(x, c)
    / Clip(x, max=c), element for element the same (and the same shape); a NaN ``c`` is left alone."""
    node = inits.index.nodes[position]
    consts = [k for k, name in enumerate(node.input) if inits.is_float(name) and inits.value(name).size == 1]
    if len(node.input) != 2 or len(node.output) != 1 or len(consts) != 1:
        return
    x, c = node.input[1 - consts[0]], node.input[consts[0]]
    if types.get(x) != FLOAT or ranks.get(x) is None or ranks[x] < inits.value(c).ndim:
        return
    if np.isnan(inits.value(c)).any():  # Max/Min propagate a NaN; Clip's NaN bound is not defined to
        return
    bound = inits.fresh(f"{node.name or node.output[0]}_bound")
    inits.graph.initializer.append(numpy_helper.from_array(inits.value(c).reshape(()).astype(np.float32), bound))
    inits.by_name[bound] = inits.graph.initializer[-1]
    bounds = [bound, ""] if node.op_type == "Max" else ["", bound]
    rewritten[position] = [helper.make_node("Clip", [x, *bounds], [node.output[0]], name=node.name)]
    report.clips += 1


_FOLDABLE = {"Cast", "Transpose", "Reshape", "Identity"}


def _folded_value(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The float32 value of a Cast/Transpose/Reshape/Identity of a float initializer, else None."""
    if not node.input or node.input[0] not in inits or len(node.output) != 1:
        return None
    source = inits[node.input[0]]
    if source.data_type not in (FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        return None
    if source.data_location == onnx.TensorProto.EXTERNAL:
        return None  # weights left on disk stay there (a folded copy would live in memory)
    value = tensor_array(source)
    attrs = attributes(node)
    if node.op_type == "Cast":
        return value.astype(np.float32) if attrs.get("to") == FLOAT else None
    if source.data_type != FLOAT:
        return None
    if node.op_type == "Identity":
        return value
    if node.op_type == "Transpose":
        return np.ascontiguousarray(np.transpose(value, attrs.get("perm")))
    if len(node.input) < 2 or node.input[1] not in inits or attrs.get("allowzero", 0):
        return None
    shape = [int(d) for d in tensor_array(inits[node.input[1]]).ravel()]
    shape = [value.shape[k] if d == 0 and k < value.ndim else d for k, d in enumerate(shape)]
    try:
        return value.reshape(shape)
    except ValueError:
        return None


def _fold_weight_producers(graph: onnx.GraphProto, report: CanonicalizeReport) -> None:
    """Replace Cast/Transpose/Reshape/Identity of an initializer by the initializer it computes."""
    outputs = {o.name for o in graph.output}
    inits = {i.name: i for i in graph.initializer}
    kept = []
    for node in graph.node:
        value = _folded_value(node, inits) if node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") else None
        if value is None or node.output[0] in outputs:
            kept.append(node)
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        graph.initializer.append(tensor)
        inits[tensor.name] = graph.initializer[-1]
        report.folded_weights += 1
    if report.folded_weights:
        del graph.node[:]
        graph.node.extend(kept)


def canonicalize(model: onnx.ModelProto) -> CanonicalizeReport:
    """Rewrite ``model`` in place (its main graph; shapes must be inferred for the MatMul rewrite)."""
    report = CanonicalizeReport()
    graph = model.graph
    _fold_weight_producers(graph, report)
    index = NodeIndex(graph)
    inits = _Initializers(graph, index)
    ranks, types = known_ranks(model), known_elem_types(model)
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for position, node in enumerate(index.nodes):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gemm":
            _untranspose_input(position, inits, rewritten, report)
            _gemm(node, inits, report)
        elif node.op_type == "MatMul" and len(node.input) == 2:
            _left_matmul(position, inits, ranks, rewritten, report)
        elif node.op_type == "ReduceMean":
            _global_mean(position, inits, ranks, types, rewritten, report)
        elif node.op_type in ("Max", "Min") and opset >= CLIP_INPUTS_OPSET:
            _bound_as_clip(position, inits, ranks, types, rewritten, report)
        elif node.op_type == "Sum" and len(node.input) == 2 and len(node.output) == 1 \
                and inits.index.only_reader(node.output[0], "LayerNormalization") is None:
            node.op_type = "Add"  # (the same sum; onnxruntime has an integer kernel for Add only)
            report.sums += 1
    if rewritten:
        nodes = [n for k, node in enumerate(index.nodes) for n in rewritten.get(k, [node])]
        del graph.node[:]
        graph.node.extend(nodes)
    if (report.folded_weights or report.gemm_scales or report.gemm_biases or report.left_matmuls
            or report.gemm_transposes or report.global_means or report.clips):
        used = {i for g in iter_graphs(graph) for n in g.node for i in n.input} | {o.name for o in graph.output}
        kept = [i for i in graph.initializer if i.name in used]
        if len(kept) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept)
    return report
