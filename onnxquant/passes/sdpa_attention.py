"""Write torch's scaled_dot_product_attention, as torch.onnx's exporters write it, in the form
onnxruntime's attention fusion matches.

transformers' default attention is SDPA. Exported by dynamo (torch >= 2.9), each block reads::

    Mul(Q, c) -> MatMul <- Mul(Reshape(Transpose(Reshape(K, (-1, S, D)), (0, 2, 1)), (B, H, D, S)), c)
    -> Add(mask) -> Softmax -> Where(IsNaN(p), 0, p) -> MatMul(., V)

with ``c = sqrt(1/sqrt(D))`` on Q and K apart, K's transpose spelled as two reshapes around a 3-D
transpose, and a guard that zeroes a Softmax row of NaNs. The TorchScript exporter (``dynamo=False``)
writes the same block with K's transpose as one ``Transpose(K_heads, (0, 2, 3, 1))`` and the padding
mask as ``Where(bool mask, 0, -inf)``. onnxruntime's fusion (``fusion_attention.py``) matches
neither. This pass writes each such block as the eager export does:
``MatMul(Q, Transpose(K, (0, 2, 3, 1))) * c**2 -> Add(mask) -> Softmax -> MatMul(., V)``.

Exactness, part by part:
- K's path: only moves data. Its subgraph (the reshapes and the shape arithmetic) is run in
  onnxruntime on tensors of several shapes and must equal the swap of K's last two axes exactly.
  A static-shape export (no dynamic axes) writes its reshape targets as constants of its one
  shape: where shape inference declares the head split's input fully static, the path is run on
  that shape alone (the graph takes no other).
- The scale: ``(cQ)(cK^T) = c**2 (QK^T)`` in real arithmetic; in float32 the two differ by rounding
  only. The fused Attention op applies ``1/sqrt(head_size)`` whatever the graph says, so the pass
  requires ``c**2`` to be that value (relative 1e-6) and declines otherwise.
- The guard: a Softmax of a finite row has no NaN (its largest term is exp(0) = 1), so the guard is
  the identity there. The pass requires the mask added to the scores to be a ``Where`` of two
  finite constants (transformers' ``Where(cond, 0, finfo.min)``): a fully masked query row (an
  all-zero attention_mask row) then adds the same finite minimum to every score and the Softmax
  is uniform, the same in the graph and in the fused op (its ``mask_filter_value`` is that
  minimum). (Scores below about -1e31, or non-finite activations, overflow the sum to -inf in
  either form; the fp32 model is no reference there.)
- A ``-inf`` mask (the TorchScript export's ``Where(cond, 0, -inf)``) is taken only where ``cond``
  is the padding mask, ``bool(mask)[:, None, None, :]``, checked by running its subgraph as the
  mask rewrite does (``attention_mask.padding_condition``); its ``-inf`` is then written as the
  lowest finite value of its type, the constant the eager export uses. A row with at least one
  kept key gives the same Softmax either way: the masked terms are exp(-inf) = 0 and
  exp(lowest - max) = 0 in float32 alike. A query row is fully masked only when all of its
  batch item's keys are, an input whose tokens are all padding: the export's Softmax is NaN there
  and its guard makes the attention output zero, where the rewritten block (as the eager export
  and the fused op) attends evenly to the padding. That difference is counted
  (``infinite_masks``) for the summary to say. Any other ``-inf`` mask (causal, banded: fully
  masked rows among kept tokens) is declined.
Anything else is left as it is.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.attention_mask import padding_condition
from onnxquant.passes.declared_shapes import declared_shapes, static_inputs
from onnxquant.passes.names import fresh_name
from onnxquant.passes.node_index import NodeIndex, attributes

# (batch, heads, sequence, head_size) shapes K's path is checked on; sequence 1 and unequal dims
# catch shape arithmetic that only holds for square or single-batch inputs.
CHECK_SHAPES = ((1, 2, 3, 4), (2, 3, 5, 4), (3, 1, 1, 2), (2, 4, 7, 3))
SCALE_TOLERANCE = 1e-6  # relative, between c**2 and 1/sqrt(head_size): float32 rounding of c
HEAD_SPLIT = [0, 2, 1, 3]  # (batch, sequence, heads, head_size) -> (batch, heads, sequence, head_size)
K_TRANSPOSED = [0, 2, 3, 1]  # (batch, sequence, heads, head_size) -> (batch, heads, head_size, sequence)
MAX_K_PATH = 8  # nodes walked back from the scaled K to its head split


@dataclass
class SdpaRewrite:
    """What the pass did: blocks rewritten, and why the others (an SDPA NaN guard seen) were not."""

    rewritten: int = 0
    declined: list[str] = field(default_factory=list)
    infinite_masks: int = 0  # rewritten blocks whose -inf padding mask was written with the lowest finite value


def _scalar(index: NodeIndex, name: str) -> float | None:
    init = index.inits.get(name)
    if init is None:
        return None
    value = tensor_array(init)
    return float(value.reshape(())) if value.size == 1 and value.dtype.kind == "f" else None


def _producer(index: NodeIndex, name: str, op: str) -> onnx.NodeProto | None:
    k = index.producer.get(name)
    if k is None or index.nodes[k].op_type != op or index.nodes[k].domain not in ("", "ai.onnx"):
        return None
    return index.nodes[k]


def _sole_reader(index: NodeIndex, name: str, op: str) -> onnx.NodeProto | None:
    k = index.only_reader(name, op)
    return None if k is None else index.nodes[k]


def _scaled_input(index: NodeIndex, mul: onnx.NodeProto) -> tuple[str, float] | None:
    """(the tensor, the constant) of a Mul of one tensor by a scalar constant."""
    values = [_scalar(index, i) for i in mul.input]
    if len(values) != 2 or (values[0] is None) == (values[1] is None):
        return None
    k = 0 if values[1] is not None else 1
    return mul.input[k], float(values[1 - k])


def _guard(index: NodeIndex, softmax: onnx.NodeProto) -> onnx.NodeProto | None:
    """The ``Where(IsNaN(p), constant, p)`` that reads Softmax output ``p`` and nothing else, if
    ``p`` is read by exactly that pair."""
    p = softmax.output[0]
    readers = [index.nodes[k] for k in index.readers.get(p, [])]
    if p in index.outputs or sorted(n.op_type for n in readers) != ["IsNaN", "Where"]:
        return None
    isnan = next(n for n in readers if n.op_type == "IsNaN")
    where = next(n for n in readers if n.op_type == "Where")
    if (list(where.input) != [isnan.output[0], where.input[1], p] or _scalar(index, where.input[1]) is None
            or index.only_reader(isnan.output[0], "Where") is None or where.output[0] in index.outputs):
        return None
    return where


def _mask_kind(index: NodeIndex, name: str) -> str | None:
    """"finite" for a ``Where`` of two finite constants, "infinite" for ``Where(cond, 0, -inf)``
    (its condition not yet checked), None for any other mask."""
    where = _producer(index, name, "Where")
    if where is None:
        return None
    values = [_scalar(index, i) for i in where.input[1:3]]
    if all(v is not None and math.isfinite(v) for v in values):
        return "finite"
    if values[0] == 0.0 and values[1] == -math.inf:
        return "infinite"
    return None


def _lowest_finite(index: NodeIndex, name: str) -> np.ndarray:
    """The lowest finite value of the type of constant ``name``, as a scalar of that type."""
    dtype = tensor_array(index.inits[name]).dtype
    return np.array(np.finfo(dtype).min, dtype)


def _k_path(index: NodeIndex, kt: str) -> tuple[onnx.NodeProto, list[int]] | None:
    """The head-split Transpose (perm 0,2,1,3 of a Reshape) that K's path starts from, and the
    positions of the path's nodes from the split's input (the split among them); None unless the
    path reads nothing but that input and constants (onnxruntime's simplifier may read the
    split's input's Shape rather than the split's). The TorchScript export's path is one Transpose
    (perm 0,2,3,1) of the Reshape: it is its own split."""
    name, split = kt, None
    for _ in range(MAX_K_PATH):
        k = index.producer.get(name)
        if k is None or index.nodes[k].op_type not in ("Reshape", "Transpose"):
            return None
        node = index.nodes[k]
        if (node.op_type == "Transpose" and attributes(node).get("perm") in (HEAD_SPLIT, K_TRANSPOSED)
                and _producer(index, node.input[0], "Reshape") is not None):
            split = node
            break
        name = node.input[0]
    if split is None:
        return None
    seen: set[int] = set()
    stack = [kt]
    while stack:
        value = stack.pop()
        if value == split.input[0] or value in index.inits or not value:
            continue
        k = index.producer.get(value)
        if k is None:  # a graph input other than the head split's output
            return None
        if k not in seen:
            seen.add(k)
            stack.extend(index.nodes[k].input)
    return split, sorted(seen)


def _check_session(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[str], output: str, name: str,
                   initializers: list[TensorProto]) -> Any:
    """An onnxruntime session running ``nodes`` alone (one thread, no graph optimization), from
    float ``inputs`` of rank 4 to ``output``, at ``model``'s opsets: a block's path checked on
    random tensors before it is trusted. Raises what onnxruntime raises for a path it cannot run."""
    import onnxruntime as ort

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in inputs],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], initializer=initializers)
    check = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(check.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _transposes_keys(model: onnx.ModelProto, index: NodeIndex, nodes: list[int], source: str, kt: str,
                     static: tuple[int, ...] | None = None) -> bool:
    """True if the nodes, run in onnxruntime from ``source`` (batch, sequence, heads, head_size) to
    ``kt``, equal its transpose to (batch, heads, head_size, sequence) on float tensors of every
    CHECK_SHAPES shape, or of ``static`` (source's declared shape) alone when given."""
    used = {i for k in nodes for i in index.nodes[k].input}
    try:
        session = _check_session(model, [index.nodes[k] for k in nodes], [source], kt, "k_path",
                                 [index.inits[i] for i in sorted(used) if i in index.inits])
        rng = np.random.default_rng(0)
        shapes = CHECK_SHAPES if static is None else ((static[0], static[2], static[1], static[3]),)
        for shape in shapes:
            batch, heads, length, size = shape
            k = rng.standard_normal((batch, length, heads, size)).astype(np.float32)
            (value,) = session.run(None, {source: k})
            if value.shape != (batch, heads, size, length) or not np.array_equal(value, k.transpose(K_TRANSPOSED)):
                return False
    except Exception:  # a path onnxruntime cannot run alone, or that fails on some shape: leave it
        return False
    return True


def _shape_subgraph(index: NodeIndex, name: str) -> tuple[list[int], set[str]] | None:
    """Positions of the nodes computing ``name`` from constants and Shapes, and the tensors those
    Shapes read; None if it reads any other value."""
    seen: set[int] = set()
    shaped: set[str] = set()
    stack = [name]
    while stack:
        value = stack.pop()
        if value in index.inits or not value:
            continue
        k = index.producer.get(value)
        if k is None:
            return None
        if k in seen:
            continue
        seen.add(k)
        node = index.nodes[k]
        if node.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                     for a in node.attribute):
            return None
        if node.op_type == "Shape":
            shaped.add(node.input[0])
        else:
            stack.extend(node.input)
    return sorted(seen), shaped


def _output_reshape(model: onnx.ModelProto, index: NodeIndex, context: onnx.NodeProto, roles: dict[str, str],
                    static: tuple[int, ...] | None) -> tuple[onnx.NodeProto, list[int]] | str | None:
    """The Reshape the TorchScript export writes after ``Softmax @ V`` (to (batch, -1, length,
    head_size) from the Shapes of the block's tensors: the same shape) and its shape nodes; None if
    the context is not read by a Reshape, why not if that Reshape is not checked the identity.

    ``roles``: the block's tensors its target may read the shape of, by role ("q_heads", "q_tokens",
    "k_tokens", "v_heads"); it is run in onnxruntime on tensors of every CHECK_SHAPES shape, once
    with keys as long as queries and V's heads as wide as Q's and once with both one longer (so a
    target reading the wrong tensor's dim shows), or only on ``static``, the K head split's input's
    declared shape; it must give the context back unchanged."""
    out = context.output[0]
    readers = [index.nodes[k] for k in index.readers.get(out, [])]
    others = [n for n in readers if n.op_type != "Shape"]
    if out in index.outputs or len(others) != 1 or others[0].op_type != "Reshape":
        return None
    reshape = others[0]
    found = _shape_subgraph(index, reshape.input[1])
    why = "the Reshape after its context is not checked to keep its shape"
    if found is None:
        return why
    nodes, shaped = found
    if any(n.op_type == "Shape" and index.nodes.index(n) not in nodes for n in readers) or not shaped <= {out, *roles}:
        return why
    kinds = {out: "context", **roles}
    used = {i for k in nodes for i in index.nodes[k].input}
    try:
        session = _check_session(model, [index.nodes[k] for k in nodes] + [reshape], sorted(shaped | {out}),
                                 reshape.output[0], "context_reshape",
                                 [index.inits[i] for i in sorted(used) if i in index.inits])
        rng = np.random.default_rng(0)
        shapes = CHECK_SHAPES if static is None else ((static[0], static[2], static[1], static[3]),)
        for (batch, heads, length, size), more in itertools.product(shapes, (0, 1) if static is None else (0,)):
            keys, width = length + more, size + more
            dims = {"q_heads": (batch, heads, length, size), "q_tokens": (batch, length, heads, size),
                    "k_tokens": (batch, keys, heads, size), "v_heads": (batch, heads, keys, width),
                    "context": (batch, heads, length, width)}
            feeds = {n: np.zeros(dims[kinds[n]], np.float32) for n in shaped}
            feeds[out] = rng.standard_normal(dims["context"]).astype(np.float32)
            (value,) = session.run(None, feeds)
            if not (value.shape == feeds[out].shape and np.array_equal(value, feeds[out])):
                return why
    except Exception:  # a target onnxruntime cannot run alone, or that fails on some shape: leave it
        return why
    return reshape, nodes


def _match(model: onnx.ModelProto, index: NodeIndex, softmax: onnx.NodeProto, head_size: int,
           declared: Callable[[], dict[str, tuple[int, ...]]], padding: Callable[[str], bool]) -> dict | str:
    """The pieces of one SDPA block, or why it is not rewritten. ``padding(cond)``: whether a -inf
    mask's condition is the padding mask (run once per condition)."""
    guard = _guard(index, softmax)
    if guard is None:
        return "no SDPA NaN guard"
    add = _producer(index, softmax.input[0], "Add")
    if add is None or index.only_reader(add.output[0], "Softmax") is None or len(add.input) != 2:
        return "the Softmax does not read scores + mask"
    scores = next((i for i in add.input if _producer(index, i, "MatMul") is not None), None)
    mask = next((i for i in add.input if i != scores), None)
    if scores is None or mask is None or index.only_reader(scores, "Add") is None:
        return "the Softmax does not read scores + mask"
    kind = _mask_kind(index, mask)
    if kind is None:
        return "its mask is not a Where of finite constants or of 0 and -inf"
    matmul = _producer(index, scores, "MatMul")
    muls = [_producer(index, i, "Mul") for i in matmul.input]
    if any(m is None or index.only_reader(m.output[0], "MatMul") is None for m in muls):
        return "Q and K are not each scaled by a Mul"
    (mul_q, mul_k) = muls
    scaled = [_scaled_input(index, m) for m in muls]
    if None in scaled:
        return "Q's and K's scales are not constants"
    (q, c_q), (kt, c_k) = scaled
    c2 = float(np.float32(np.float64(c_q) * np.float64(c_k)))
    if not (c_q > 0 and c_k > 0 and abs(c2 * math.sqrt(head_size) - 1.0) <= SCALE_TOLERANCE):
        return f"its scale {c2:.6g} is not 1/sqrt(head size {head_size}), which the fused op applies"
    q_split = _producer(index, q, "Transpose")
    if q_split is None or attributes(q_split).get("perm") != HEAD_SPLIT:
        return "Q is not a head split"
    path = _k_path(index, kt)
    if path is None:
        return "K's path does not start at a head split"
    split, nodes = path
    static = declared().get(split.input[0])
    if static is not None and len(static) != 4:
        return "K's head split is not 4-D"
    if not _transposes_keys(model, index, nodes, split.input[0], kt, static):
        if static is None and static_inputs(model):  # (a static export's path holds its one shape only)
            return "K's head split's shape not declared (shape inference), so its path was checked on other shapes"
        return "K's path is not a transpose of its head split's last two axes"
    readers = [index.nodes[k] for k in index.readers.get(guard.output[0], [])]
    context = readers[0] if len(readers) == 1 and readers[0].op_type == "MatMul" else None
    identity = None  # (a Dropout may sit between the guard and the MatMul: no context Reshape looked for)
    if context is not None and context.input[0] == guard.output[0]:
        roles = {q: "q_heads", q_split.input[0]: "q_tokens", split.input[0]: "k_tokens", context.input[1]: "v_heads"}
        identity = _output_reshape(model, index, context, roles, static)
        if isinstance(identity, str):
            return identity
    infinite = _producer(index, mask, "Where") if kind == "infinite" else None
    if infinite is not None and not padding(infinite.input[0]):
        return "its -inf mask is not a padding mask (a row fully masked among kept tokens needs the NaN guard)"
    dead = [index.nodes.index(n) for n in (guard, mul_q, mul_k)] + nodes + [index.producer[guard.input[0]]]
    if identity is not None:
        dead += [index.nodes.index(identity[0]), *identity[1]]
    return {"guard": guard, "matmul": matmul, "q": q, "split": split, "scale": c2, "add": add, "infinite": infinite,
            "context": context, "identity": None if identity is None else identity[0], "dead": dead}


def rewrite_sdpa_attention(model: onnx.ModelProto, head_size: int,
                           known: dict[str, tuple[int, ...]] | None = None) -> SdpaRewrite:
    """Rewrite each SDPA block (see the module docstring) in place into
    ``MatMul(Q, Transpose(K_heads, (0, 2, 3, 1))) * c**2 -> Add(mask) -> Softmax -> MatMul(., V)``.

    Blocks with a NaN guard after their Softmax that are not rewritten are counted in ``declined``
    with the reason. A rewritten block's -inf padding mask is replaced, for that block, by the same
    ``Where`` with the lowest finite value (one per mask, shared by the blocks that read it). The
    nodes the rewrite leaves unread are removed. ``known``: the model's declared shapes, if already
    inferred.
    """
    graph = model.graph
    index = NodeIndex(graph)
    result = SdpaRewrite()
    taken = {n for node in index.nodes for n in (*node.input, *node.output)} | set(index.inits)
    taken |= {i.name for i in graph.input}
    before: dict[int, list[onnx.NodeProto]] = {}
    after: dict[int, list[onnx.NodeProto]] = {}
    dead: set[int] = set()
    shapes: list[dict[str, tuple[int, ...]]] = [] if known is None else [known]

    def declared() -> dict[str, tuple[int, ...]]:  # (inferred once, and only if a block gets that far)
        if not shapes:
            shapes.append(declared_shapes(model))
        return shapes[0]

    checked: dict[str, bool] = {}

    def padding(cond: str) -> bool:  # (run once per condition, and only if a block gets that far)
        if cond not in checked:
            checked[cond] = padding_condition(model, index, cond) is not None
        return checked[cond]

    finite: dict[str, str] = {}  # a -inf Where's output -> its finite replacement's

    for node in index.nodes:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        if attributes(node).get("axis", -1) not in (-1, 3):
            continue
        found = _match(model, index, node, head_size, declared, padding)
        if isinstance(found, str):
            if found != "no SDPA NaN guard":
                result.declined.append(found)
            continue
        matmul, split = found["matmul"], found["split"]
        position = index.nodes.index(matmul)
        base = matmul.output[0]
        keys, raw, scale = (fresh_name(taken, f"{base}_{b}") for b in ("keys_transposed", "unscaled", "scale"))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(found["scale"], np.float32), scale))
        before[position] = [helper.make_node("Transpose", [split.input[0]], [keys], perm=K_TRANSPOSED,
                                             name=fresh_name(taken, f"{base}_transpose_keys"))]
        after[position] = [helper.make_node("Mul", [raw, scale], [base], name=fresh_name(taken, f"{base}_scale"))]
        matmul.input[:] = [found["q"], keys]
        matmul.output[:] = [raw]
        guard = found["guard"]
        for k in index.readers.get(guard.output[0], []):
            reader = index.nodes[k]
            reader.input[:] = [node.output[0] if i == guard.output[0] else i for i in reader.input]
        infinite = found["infinite"]
        if infinite is not None:
            old = infinite.output[0]
            if old not in finite:
                finite[old], lowest = (fresh_name(taken, f"{old}_{b}") for b in ("finite", "lowest"))
                graph.initializer.append(onnx.numpy_helper.from_array(_lowest_finite(index, infinite.input[2]), lowest))
                where = index.nodes.index(infinite)
                after.setdefault(where, []).append(helper.make_node(
                    "Where", [infinite.input[0], infinite.input[1], lowest], [finite[old]],
                    name=fresh_name(taken, f"{old}_finite_where")))
                dead.add(where)  # (removed once no block reads it)
            add = found["add"]
            add.input[:] = [finite[old] if i == old else i for i in add.input]
            result.infinite_masks += 1
        identity = found["identity"]
        if identity is not None:  # (its readers read the context itself)
            for k in index.readers.get(identity.output[0], []):
                reader = index.nodes[k]
                reader.input[:] = [found["context"].output[0] if i == identity.output[0] else i for i in reader.input]
        dead.update(found["dead"])
        result.rewritten += 1
    if result.rewritten:
        ordered = []
        for k, node in enumerate(index.nodes):
            ordered.extend(before.get(k, ()))
            kept = onnx.NodeProto()
            kept.CopyFrom(node)  # (copied before the repeated field they live in is cleared)
            ordered.append(kept)
            ordered.extend(after.get(k, ()))
        del graph.node[:]
        graph.node.extend(_without_unread(ordered, dead, index, {o.name for o in graph.output}))
    return result


def _without_unread(nodes: list[onnx.NodeProto], candidates: set[int], index: NodeIndex,
                    outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those of the candidates (by their old position) nothing reads any more."""
    names = {tuple(index.nodes[k].output) for k in candidates}
    removed: set[tuple[str, ...]] = set()
    while True:
        read = {i for n in nodes if tuple(n.output) not in removed for i in n.input} | outputs
        newly = {o for o in names - removed if not any(v in read for v in o)}
        if not newly:
            break
        removed |= newly
    return [n for n in nodes if tuple(n.output) not in removed]
