"""Write a padding mask built with And/Where in the form onnxruntime's attention fusion matches.

torch.onnx's dynamo exporter (the default since torch 2.9) writes a HF transformers encoder's
padding mask as a boolean index computation: ``Range``, ``Unsqueeze``, ``GatherND`` of the mask
cast to bool, ``And``-ed with always-true position checks, then ``Where(cond, 0, min)`` added to
the attention scores. onnxruntime's attention fusion (``fusion_attention.py``) matches the masks
older exports write, not this one, so such an encoder was quantized MatMul by MatMul. The mask is
written as transformers' SDPA export writes it, one of the forms the fusion matches:
``inverse = 1 - float(Expand(Unsqueeze(Unsqueeze(bool(mask)))))``, ``Where(bool(inverse), min, inverse)``
(the classic ``(1 - mask) * min`` is ambiguous to the matcher next to a scale written as Mul),
expanded to the old mask's shape.

For any mask values the two are equal value for value. The condition's subgraph is checked equal
to ``bool(mask[b, j])`` broadcast over heads and query positions by running it, in onnxruntime, on
masks of several batch sizes and lengths (all-zero and all-one rows among them, 1, 2 and -1 at kept
positions; and longer than any number the subgraph holds, so that a local-attention band or a
position limit shows), not read from its op types: exporters spell it in more ways than a pattern
would cover. A dim the mask input declares fixed (a static-shape export: its index constants
hold that one shape) is checked at that size only (when every dim is, at any length: no other can
be fed); the checks then repeat on fresh masks, rows forced all kept and all padded only on every
other one, so that a condition that reads a row's first position only (true of a forced row) is
caught. Anything else is left as it is.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name
from onnxquant.passes.node_index import NodeIndex

# (batch, sequence) shapes the condition is checked on; sequence 1 and a batch of 3 catch index
# arithmetic that only holds for square or single-batch inputs.
CHECK_SHAPES = ((1, 1), (1, 7), (2, 5), (3, 9))
INTEGER_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL}
KEPT_VALUES = (1, 2, -1)  # values of an integer mask at kept positions, as checked
# A number in the condition's subgraph (a local-attention band |q - k| < 128, a position limit
# k < 512, a constant table's size) can make it differ from the padding mask only on longer
# inputs: it is also checked on a batch and a sequence longer than its largest number up to this;
# a larger one cannot be checked so, and the mask is left as it is.
MAX_CHECK_LENGTH = 1024
# Numbers this large are "to the end" sentinels (Slice ends, INT32/INT64 max, float min), not lengths.
SENTINEL = 2**31 - 1
MIN_TRIALS = 6  # masks checked at least, when declared dims leave fewer distinct shapes
# Inputs of standard ops whose values set the output's shape (the rest set it through their shapes).
SHAPE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Range": (0, 1, 2), "ConstantOfShape": (0,),
                  "Tile": (1,), "Pad": (1, 3), "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,),
                  "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "OneHot": (1,), "CenterCropPad": (1,),
                  "Col2Im": (1, 2), "DFT": (1, 2), "STFT": (1, 2, 3), "MaxUnpool": (2,), "AffineGrid": (1,),
                  **{op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                         "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")}}
VALUE_SHAPED = {"NonZero", "Compress", "Unique", "NonMaxSuppression", "StringSplit"}  # shape set by all values


def _constant(index: NodeIndex, name: str) -> np.ndarray | None:
    init = index.inits.get(name)
    return None if init is None else tensor_array(init)


def _feeds_scores(index: NodeIndex, name: str) -> bool:
    """Every reader of ``name`` is an Add whose one reader is a Softmax (the attention scores)."""
    readers = index.readers.get(name, [])
    if not readers or name in index.outputs:
        return False
    for k in readers:
        add = index.nodes[k]
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            return False
        if index.only_reader(add.output[0], "Softmax") is None:
            return False
    return True


def _ancestors(index: NodeIndex, name: str) -> list[int] | None:
    """Positions (in graph order) of the nodes that compute ``name``; None if a subgraph-bearing
    node is among them."""
    seen: set[int] = set()
    stack = [name]
    while stack:
        k = index.producer.get(stack.pop())
        if k is None or k in seen:
            continue
        node = index.nodes[k]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        seen.add(k)
        stack.extend(i for i in node.input if i)
    return sorted(seen)


def _input_dependence(index: NodeIndex, nodes: list[int], graph_inputs: set[str], cond: str) -> tuple[set[str], set[str]]:
    """The graph inputs whose values ``cond``'s values depend on, and those its shape depends on.

    A Shape reads its input's shape only: an input reaching ``cond`` only through Shapes (the
    TorchScript export takes batch and length from the embeddings' shape) is a value dependence
    only if a value-dependent shape lies on the way (a Reshape target, a NonZero, an op of another
    domain, computed from its values)."""
    values: dict[str, set[str]] = {name: {name} for name in graph_inputs}
    shapes: dict[str, set[str]] = {}
    for k in nodes:  # (graph order: producers first)
        node = index.nodes[k]
        ins = [i for i in node.input if i]
        shape_deps = set().union(*(shapes.get(i, set()) for i in ins))
        standard = node.domain in ("", "ai.onnx")
        if not standard or node.op_type in VALUE_SHAPED:
            shape_deps |= set().union(*(values.get(i, set()) for i in ins))
        else:
            for position in SHAPE_OPERANDS.get(node.op_type, ()):
                if position < len(node.input) and node.input[position]:
                    shape_deps |= values.get(node.input[position], set())
        value_deps = shape_deps if standard and node.op_type == "Shape" else \
            set().union(*(values.get(i, set()) for i in ins)) | shape_deps
        for out in node.output:
            values[out], shapes[out] = value_deps, shape_deps
    return values.get(cond, set()), shapes.get(cond, set())


def _magnitudes(value: np.ndarray) -> list[float]:
    """A constant's dims and the largest magnitude of its finite numbers."""
    out = [float(d) for d in value.shape]
    if value.size and value.dtype.kind in "biuf":
        finite = np.abs(value.astype(np.float64))
        finite = finite[np.isfinite(finite)]
        if finite.size:
            out.append(float(finite.max()))
    return out


def _value_region(index: NodeIndex, cond: str) -> set[int]:
    """Positions of the nodes whose output values reach ``cond`` other than through a Shape's input."""
    seen: set[int] = set()
    stack = [cond]
    while stack:
        k = index.producer.get(stack.pop())
        if k is None or k in seen:
            continue
        seen.add(k)
        node = index.nodes[k]
        if not (node.op_type == "Shape" and node.domain in ("", "ai.onnx")):
            stack.extend(i for i in node.input if i)
    return seen


def _check_shapes(index: NodeIndex, nodes: list[int], valued: set[int] | None = None) -> tuple[tuple[int, int], ...] | None:
    """CHECK_SHAPES, and a batch and a sequence longer than every number the subgraph's constants and
    attributes hold; None if one is beyond MAX_CHECK_LENGTH (not a sentinel). Of the nodes that reach
    the condition only through a Shape (not in ``valued``, when given: the TorchScript export's
    embeddings), only the constants that set a shape count, not weights (a 30522-word table)."""
    numbers: list[float] = []
    for k in nodes:
        node = index.nodes[k]
        shape_only = valued is not None and k not in valued
        operands = (SHAPE_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx")
                    else range(len(node.input)))  # (another domain's op: any input may set its shape)
        for position, name in enumerate(node.input):
            if name in index.inits and not (shape_only and position not in operands):
                numbers.extend(_magnitudes(tensor_array(index.inits[name])))
        for a in node.attribute:
            if a.type == onnx.AttributeProto.INT:
                numbers.append(abs(float(a.i)))
            elif a.type == onnx.AttributeProto.INTS:
                numbers.extend(abs(float(i)) for i in a.ints)
            elif a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
                numbers.extend(_magnitudes(np.array(a.floats if a.type == onnx.AttributeProto.FLOATS else a.f)))
            elif a.type == onnx.AttributeProto.TENSOR:
                numbers.extend(_magnitudes(onnx.numpy_helper.to_array(a.t)))
    reach = max((n for n in numbers if n < SENTINEL), default=0.0)
    if reach > MAX_CHECK_LENGTH:
        return None
    longer = int(np.ceil(reach)) + 2  # (k <= reach is false first at k = reach + 1)
    # a limit on the sequence shows on a longer sequence, one on the batch index on a larger batch
    extra = [(2, longer)] if longer > max(length for _, length in CHECK_SHAPES) else []
    if longer > max(batch for batch, _ in CHECK_SHAPES):
        extra.append((longer, 3))
    return (*CHECK_SHAPES, *extra)


def _with_declared_dims(shapes: tuple[tuple[int, int], ...], declared: tuple[int, int]) -> list[tuple[int, int]]:
    """``shapes`` with each dim the mask input declares fixed (non-zero in ``declared``) set to it,
    repeated to MIN_TRIALS checks when that leaves fewer."""
    fixed: list[tuple[int, int]] = []
    for batch, length in shapes:
        shape = (declared[0] or batch, declared[1] or length)
        if shape not in fixed:
            fixed.append(shape)
    trials = list(fixed)
    while len(trials) < MIN_TRIALS:
        trials.append(fixed[len(trials) % len(fixed)])
    return trials


def _trial_shapes(index: NodeIndex, nodes: list[int], declared: tuple[int, int],
                  valued: set[int] | None = None) -> list[tuple[int, int]] | None:
    """The (batch, sequence) shapes the condition is run on: a mask of fully declared dims (a static
    export) takes that one shape only, however long (no longer one can be fed, so no band or limit
    beyond it can show); otherwise ``_check_shapes``, each declared dim set to its value."""
    if all(declared):
        return [declared] * MIN_TRIALS
    shapes = _check_shapes(index, nodes, valued)
    if shapes is None:
        return None
    return _with_declared_dims(shapes, declared) if any(declared) else list(shapes)


def _trial_masks(rng: np.random.Generator, shapes: list[tuple[int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(bits, values) per trial shape: random 0/1 bits, and the mask fed, 1, 2 or -1 at kept positions.
    Every other one has its first row all kept and its last all padded; the others are random in
    every row, so that a condition reading another row (``padding & padding[0:1]``: kept only where
    the first sample keeps it) cannot pass on forced rows, and a fixed batch of two gets random rows."""
    for trial, (batch, length) in enumerate(shapes):
        bits = rng.integers(0, 2, (batch, length))
        if trial % 2 == 0:
            bits[0, :] = 1
            if batch > 1:
                bits[-1, :] = 0
        yield bits, bits * rng.choice(KEPT_VALUES, bits.shape)


def _condition_model(model: onnx.ModelProto, index: NodeIndex, nodes: list[int], cond: str,
                     inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [index.nodes[k] for k in nodes], "mask_condition", inputs,
        [helper.make_tensor_value_info(cond, TensorProto.BOOL, None)],
        initializer=[index.inits[i] for i in sorted({i for k in nodes for i in index.nodes[k].input}) if i in index.inits])
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def padding_condition(model: onnx.ModelProto, index: NodeIndex, cond: str) -> str | None:
    """The (batch, sequence) graph input ``mask`` for which ``cond`` equals ``bool(mask)[:, None, None, :]``
    broadcast to cond's 4-D shape, checked by running cond's subgraph; None if it does not, or if
    it reads any other input's values (inputs it reads only through Shape, directly or through
    ops whose output shape their values do not set, are fed zeros of the mask's shape)."""
    import onnxruntime as ort

    nodes = _ancestors(index, cond)
    if not nodes:
        return None
    graph_inputs = {i.name: i for i in model.graph.input if i.name not in index.inits}
    read = {i for k in nodes for i in index.nodes[k].input if i in graph_inputs}
    valued, shaped = _input_dependence(index, nodes, set(read), cond)
    if len(valued) != 1 or not shaped <= valued:
        return None
    mask = next(iter(valued))
    for name in read:
        tensor_type = graph_inputs[name].type.tensor_type
        if tensor_type.elem_type not in INTEGER_TYPES or len(tensor_type.shape.dim) != 2:
            return None
    inputs = [graph_inputs[name] for name in sorted(read)]
    dims = graph_inputs[mask].type.tensor_type.shape.dim
    declared = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in dims)
    shapes = _trial_shapes(index, nodes, declared, _value_region(index, cond))
    if shapes is None:
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(_condition_model(model, index, nodes, cond, inputs).SerializeToString(),
                                       options, providers=["CPUExecutionProvider"])
    except Exception:  # a subgraph onnxruntime cannot run alone (e.g. a type it cannot infer): leave it
        return None
    rng = np.random.default_rng(0)
    dtypes = {name: helper.tensor_dtype_to_np_dtype(graph_inputs[name].type.tensor_type.elem_type) for name in read}
    for bits, values in _trial_masks(rng, shapes):
        batch, length = bits.shape
        feeds = {name: np.zeros((batch, length), dtypes[name]) for name in read}
        # kept positions hold 1, 2 and -1: the condition must be bool(mask), not mask == 1
        feeds[mask] = values.astype(dtypes[mask])
        try:
            (value,) = session.run(None, feeds)
        except Exception:
            return None
        if value.ndim != 4 or value.shape[0] != batch or value.shape[-1] != length or value.shape[1] != 1:
            return None
        if not np.array_equal(value, np.broadcast_to(bits.astype(bool)[:, None, None, :], value.shape)):
            return None
    return mask


def rewrite_padding_masks(model: onnx.ModelProto) -> int:
    """Rewrite each ``Where(cond, 0, min)`` added to attention scores, whose ``cond`` is a padding mask
    input as bool, into ``Where(bool(1 - m), min, 1 - m)`` with ``m = float(bool(mask))`` expanded
    to the old Where's shape, in place.

    Returns how many masks were rewritten (the old Where and its condition are left, read by the
    new mask's Shape only, for the fusion to prune with it).
    """
    graph = model.graph
    index = NodeIndex(graph)
    taken = {n for node in index.nodes for n in (*node.input, *node.output)} | set(index.inits)
    taken |= {i.name for i in graph.input}
    input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    after: dict[int, list[onnx.NodeProto]] = {}  # new nodes, by the position of the Where they replace
    for position, node in enumerate(index.nodes):
        if node.op_type != "Where" or node.domain not in ("", "ai.onnx") or len(node.input) != 3:
            continue
        zero, fill = _constant(index, node.input[1]), _constant(index, node.input[2])
        if zero is None or fill is None or fill.size != 1 or zero.size != 1 or fill.dtype != zero.dtype:
            continue
        if fill.dtype.kind != "f" or float(zero.reshape(())) != 0.0 or not -np.inf < float(fill.reshape(())) < 0.0:
            continue
        if not _feeds_scores(index, node.output[0]):
            continue
        mask = padding_condition(model, index, node.input[0])
        if mask is None:
            continue
        elem_type = helper.np_dtype_to_tensor_dtype(fill.dtype)

        def name(base: str) -> str:
            return fresh_name(taken, f"{mask}_{base}")

        axis1, axis2, one, filler = (name(b) for b in ("axis1", "axis2", "one", "filter_value"))
        graph.initializer.extend([
            onnx.numpy_helper.from_array(np.array([1], np.int64), axis1),
            onnx.numpy_helper.from_array(np.array([2], np.int64), axis2),
            onnx.numpy_helper.from_array(np.array(1, fill.dtype), one),
            onnx.numpy_helper.from_array(fill.reshape(()).copy(), filler),
        ])
        heads, rows, shape, full, cast, inverse, flag, added = (
            name(b) for b in ("heads", "rows", "shape", "expanded", "float", "inverse", "masked", "additive"))
        # bool(mask) first: an integer mask attends wherever it is non-zero (2 and -1 too), as the
        # condition does, and the fusion reads that 0/1 mask. (Written Not(mask == 0): the fusion
        # casts its mask to int32 and would fold a Cast to bool into that, -1 then masking.)
        to_bool: list[onnx.NodeProto] = []
        source = mask
        if input_types[mask] != TensorProto.BOOL:
            zero_mask, padded, source = name("zero"), name("padded"), name("kept")
            graph.initializer.append(onnx.numpy_helper.from_array(
                np.array(0, helper.tensor_dtype_to_np_dtype(input_types[mask])), zero_mask))
            to_bool = [helper.make_node("Equal", [mask, zero_mask], [padded], name=name("equal_zero")),
                       helper.make_node("Not", [padded], [source], name=name("not"))]
        after[position] = [
            *to_bool,
            helper.make_node("Unsqueeze", [source, axis1], [heads], name=name("unsqueeze_heads")),
            helper.make_node("Unsqueeze", [heads, axis2], [rows], name=name("unsqueeze_rows")),
            # to the old Where's shape (batch, 1, queries, sequence): scores of fewer query rows, or
            # a zero of higher rank, broadcast as before (the fusion does not read it)
            helper.make_node("Shape", [node.output[0]], [shape], name=name("shape")),
            helper.make_node("Expand", [rows, shape], [full], name=name("expand")),
            helper.make_node("Cast", [full], [cast], name=name("cast"), to=elem_type),
            helper.make_node("Sub", [one, cast], [inverse], name=name("sub")),
            helper.make_node("Cast", [inverse], [flag], name=name("cast_bool"), to=TensorProto.BOOL),
            helper.make_node("Where", [flag, filler, inverse], [added], name=name("where")),
        ]
        for k in index.readers[node.output[0]]:
            add = index.nodes[k]
            add.input[:] = [added if i == node.output[0] else i for i in add.input]
    if after:
        ordered = []
        for k, node in enumerate(index.nodes):
            kept = onnx.NodeProto()
            kept.CopyFrom(node)  # (copied before the repeated field they live in is cleared)
            ordered.append(kept)
            ordered.extend(after.get(k, ()))  # (they read the Where's output; its readers come later)
        del graph.node[:]
        graph.node.extend(ordered)
    return len(after)
