"""Pass ``int8_upsample``: a nearest Resize by whole factors between a DequantizeLinear and a
QuantizeLinear of one scale becomes the same copy of the integer tensor, spelled so that
onnxruntime's channels-last int8 graph runs it as one broadcast copy.

onnxruntime fuses ``DQ -> Resize -> Q`` into a uint8 Resize and, between QLinearConvs, runs it
channels-last (NHWC). Its nearest Resize has a fast path only for NCHW by 2 (scales 1, 1, 2, 2):
channels-last it takes the per-element loop. In PP-OCRv4 det (onnxruntime 1.32, one thread) the
2x upsample of 96 channels on 60x80 took 2.6 ms as uint8 NHWC, against 0.08 ms NCHW and 0.4 ms
in fp32; its six upsamples cost 5.5-6.9 ms against fp32's 1.2 ms.

A nearest Resize by whole factors ``kh, kw`` repeats each pixel (asymmetric coordinates with
floor, half-pixel ones with rounding, tf_half_pixel_for_nn with floor: pixel ``i`` reads
``i // k``). Written as ``Transpose(NHWC) -> Unsqueeze(2, 4) -> Expand(1, 1, kh, 1, kw, 1) ->
Reshape -> Transpose(NCHW)`` on the integers, onnxruntime cancels both Transposes against the
QLinearConvs' own and Expand copies whole channel vectors (the six: 0.8 ms). Exact: the same
integers move. Only where a QDQ Conv feeds the Resize through ops onnxruntime keeps
channels-last: elsewhere the Transposes would stay and cost more than they save.

The Reshape's target shape is computed (the input's height and width are often dynamic), so
onnxruntime would not know its rank and could not push its Transposes through the ops after it:
the pass records the rank in ``value_info`` (which ``compact`` keeps for such a Reshape).

``shuffle_integers`` does the same for a DepthToSpace (a pixel shuffle) between one scale's Q/DQ.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.int8_pad import _read_in_bodies, _scalar_params
from onnxquant.passes.names import fresh_name, names_in_use

MIN_OPSET = 11  # Resize(X, roi, scales, sizes) and its coordinate modes
UNSQUEEZE_AXES_INPUT_OPSET = 13
# (coordinate_transformation_mode, nearest_mode) pairs under which pixel i of a resize by a whole
# factor k reads input pixel i // k.
EXACT_MODES = frozenset({("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor"),
                         ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
                         ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")})
# Ops onnxruntime runs channels-last between QLinearConvs (the Transposes pass through them).
_CHANNELS_LAST = frozenset({"QuantizeLinear", "DequantizeLinear", "Add", "Mul", "Concat", "Resize", "Relu",
                            "Clip", "MaxPool", "AveragePool", "Sigmoid", "LeakyRelu"})
_MAX_STEPS = 64  # how far back the search for a QDQ Conv goes


def upsample_integers(model: onnx.ModelProto) -> int:
    """Rewrite every exact whole-factor nearest ``DQ -> Resize -> Q`` of one scale that a QDQ Conv
    feeds, in the main graph (in place); returns how many."""
    return _on_integers(model, "Resize", _whole_factors, _repeat_nodes)


def shuffle_integers(model: onnx.ModelProto) -> int:
    """Rewrite every ``DQ -> DepthToSpace (DCR) -> Q`` of one scale that a QDQ Conv feeds, in the
    main graph (in place), as a channels-last move of the integers; returns how many.

    onnxruntime's CPU DepthToSpace is a generic 6-D shuffle (12 ms for uint8 96x120x160 by 2,
    loaded machine, against 2.5 ms for the channels-last Transpose below). Channels-last, DCR's
    channel ``(i * b + j) * C + c`` of pixel ``(h, w)`` goes to pixel ``(h * b + i, w * b + j)``:
    ``Reshape(n, h, w, b, b * C) -> Transpose(n, h, b, w, b * C) -> Reshape(n, h * b, w * b, C)``
    moves blocks of ``b * C`` values, and the outer Transposes cancel against the QLinearConvs'
    as the upsample's do (passes/convtranspose_as_conv.py writes such DepthToSpaces)."""
    return _on_integers(model, "DepthToSpace", _dcr_block, _shuffle_nodes)


def _on_integers(model: onnx.ModelProto, op_type: str, matches: Callable[[onnx.NodeProto, dict[str, TensorProto]], Any],
                 build: Callable[..., tuple[list[onnx.NodeProto], list[TensorProto], str]]) -> int:
    """Replace each ``DQ -> op_type -> Q`` of one scale fed by a QDQ Conv for which
    ``matches(node, inits)`` gives a parameter by ``build(name, source, target, parameter, used,
    opset)``'s nodes (in place); returns how many."""
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        return 0
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output} | _read_in_bodies(graph)
    used = names_in_use(graph)
    dropped: set[int] = set()
    replacing: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[TensorProto] = []
    shapes: list[onnx.ValueInfoProto] = []
    for node in graph.node:
        if node.op_type != op_type or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        parameter = matches(node, inits)
        dq = producer.get(node.input[0])
        after = readers.get(node.output[0], [])
        if parameter is None or dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 \
                or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        params = _scalar_params(dq, inits)
        # uint8 only: with int8 activations onnxruntime's x86 provider converts each Q -> DQ
        # pair to uint8 for its kernels, and the reshuffle in between would break those pairs
        # (the kernel check then finds float islands and the neighbours go float)
        if params is None or params != _scalar_params(q, inits) or params[2] != TensorProto.UINT8 \
                or not _fed_by_qdq_conv(dq, producer, inits):
            continue
        nodes, tensors, reshaped = build(node.name, dq.input[0], q.output[0], parameter, used, opset)
        replacing[id(node)] = nodes
        new_inits.extend(tensors)
        shapes.append(helper.make_tensor_value_info(reshaped, inits[q.input[2]].data_type,
                                                    [f"{reshaped}_{axis}" for axis in "nhwc"]))
        dropped.add(id(q))
        if len(readers.get(dq.output[0], [])) == 1 and dq.output[0] not in outputs:
            dropped.add(id(dq))
    if replacing:
        removed = [n for n in graph.node if id(n) in dropped or id(n) in replacing]
        kept = [m for n in graph.node if id(n) not in dropped for m in replacing.get(id(n), [n])]
        del graph.node[:]
        graph.node.extend(kept)
        # the replaced nodes' constant inputs (a Resize's roi and scales), and Q/DQ parameters,
        # that no node reads any more
        gone = {i for n in removed for i in n.input}
        read = {i for n in kept for i in n.input} | outputs | {i.name for i in graph.input}
        unread = [i for i in graph.initializer if i.name in gone and i.name not in read]
        for init in unread:
            graph.initializer.remove(init)
        graph.initializer.extend(new_inits)
        graph.value_info.extend(shapes)
    return len(replacing)


def _whole_factors(resize: onnx.NodeProto, inits: dict[str, TensorProto]) -> tuple[int, int] | None:
    """(kh, kw) when ``resize`` repeats each pixel of a 4-D tensor kh x kw times, else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    mode = attrs.get("mode", b"nearest")
    modes = (attrs.get("coordinate_transformation_mode", b"half_pixel").decode(),
             attrs.get("nearest_mode", b"round_prefer_floor").decode())
    if mode != b"nearest" or modes not in EXACT_MODES or attrs.get("axes") or attrs.get("antialias", 0):
        return None
    if len(resize.input) < 3 or resize.input[2] not in inits or (len(resize.input) > 3 and resize.input[3]):
        return None
    scales = tensor_array(inits[resize.input[2]]).astype(np.float64)
    if scales.shape != (4,) or scales[0] != 1 or scales[1] != 1:
        return None
    kh, kw = scales[2], scales[3]
    if kh != int(kh) or kw != int(kw) or kh < 1 or kw < 1 or (kh == 1 and kw == 1):
        return None
    return int(kh), int(kw)


def _fed_by_qdq_conv(dq: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                     inits: dict[str, TensorProto]) -> bool:
    """True when a Conv onnxruntime makes a QLinearConv (a DequantizeLinear on its input) reaches
    ``dq`` through ops it keeps channels-last: then the Resize runs channels-last too."""
    todo, seen = [dq], set()
    while todo and len(seen) < _MAX_STEPS:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for name in node.input:
            before = producer.get(name)
            if before is None or name in inits:
                continue
            if before.op_type == "Conv" and before.domain in ("", "ai.onnx"):
                feeding = producer.get(before.input[0])
                if feeding is not None and feeding.op_type == "DequantizeLinear":
                    return True
            elif before.op_type in _CHANNELS_LAST and before.domain in ("", "ai.onnx"):
                todo.append(before)
    return False


def _repeat_nodes(base: str, source: str, target: str, factors: tuple[int, int], used: set[str],
                  opset: int) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """The nodes that repeat each pixel of ``source`` (NCHW integers) into ``target``, their
    constant inputs, and the name of the Reshape's output (its rank is recorded)."""
    kh, kw = factors

    def name(suffix: str) -> str:
        return fresh_name(used, f"{base}_{suffix}")

    repeat = numpy_helper.from_array(np.array([1, 1, kh, 1, kw, 1], np.int64), name("repeat"))
    grow = numpy_helper.from_array(np.array([1, kh, kw, 1], np.int64), name("grow"))
    nhwc, unsqueezed, expanded, shape, grown, reshaped = (name(s) for s in
                                                          ("nhwc", "unsqueezed", "repeated", "shape", "grown", "nhwc_out"))
    constants = [repeat, grow]
    if opset >= UNSQUEEZE_AXES_INPUT_OPSET:
        axes = numpy_helper.from_array(np.array([2, 4], np.int64), name("axes"))
        constants.append(axes)
        unsqueeze = helper.make_node("Unsqueeze", [nhwc, axes.name], [unsqueezed], name=name("unsqueeze"))
    else:
        unsqueeze = helper.make_node("Unsqueeze", [nhwc], [unsqueezed], axes=[2, 4], name=name("unsqueeze"))
    nodes = [
        helper.make_node("Transpose", [source], [nhwc], perm=[0, 2, 3, 1], name=name("to_nhwc")),
        unsqueeze,
        # named as the Resize was: reports and the summary find the layer by its name
        helper.make_node("Expand", [unsqueezed, repeat.name], [expanded], name=base),
        helper.make_node("Shape", [nhwc], [shape], name=name("shape")),
        helper.make_node("Mul", [shape, grow.name], [grown], name=name("grow_shape")),
        helper.make_node("Reshape", [expanded, grown], [reshaped], name=name("reshape")),
        helper.make_node("Transpose", [reshaped], [target], perm=[0, 3, 1, 2], name=name("to_nchw")),
    ]
    return nodes, constants, reshaped


def _dcr_block(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> int | None:
    """The block size of a DCR-mode DepthToSpace (DepthToSpace's default mode), else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    block = int(attrs.get("blocksize", 0))
    return block if attrs.get("mode", b"DCR") == b"DCR" and block > 1 else None


def _shuffle_nodes(base: str, source: str, target: str, block: int, used: set[str],
                   opset: int) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """The nodes that move the DCR channel blocks of ``source`` (NCHW integers) into pixels of
    ``target``, their constant inputs, and the name of the Reshape's output (its rank is recorded)."""

    def name(suffix: str) -> str:
        return fresh_name(used, f"{base}_{suffix}")

    split = numpy_helper.from_array(np.array([0, 0, 0, block, -1], np.int64), name("split"))
    grow = numpy_helper.from_array(np.array([1, block, block, 1], np.int64), name("grow"))
    per_pixel = numpy_helper.from_array(np.array([1, 1, 1, block * block], np.int64), name("per_pixel"))
    nhwc, rows, moved, shape, grown, merged, reshaped = (
        name(s) for s in ("nhwc", "rows", "moved", "shape", "grown", "merged_shape", "nhwc_out"))
    nodes = [
        helper.make_node("Transpose", [source], [nhwc], perm=[0, 2, 3, 1], name=name("to_nhwc")),
        helper.make_node("Reshape", [nhwc, split.name], [rows], name=name("split_rows")),
        # named as the DepthToSpace was: reports and the summary find the layer by its name
        helper.make_node("Transpose", [rows], [moved], perm=[0, 1, 3, 2, 4], name=base),
        helper.make_node("Shape", [nhwc], [shape], name=name("shape_of")),
        helper.make_node("Mul", [shape, grow.name], [grown], name=name("grow_shape")),
        helper.make_node("Div", [grown, per_pixel.name], [merged], name=name("merge_shape")),
        helper.make_node("Reshape", [moved, merged], [reshaped], name=name("merge")),
        helper.make_node("Transpose", [reshaped], [target], perm=[0, 3, 1, 2], name=name("to_nchw")),
    ]
    return nodes, [split, grow, per_pixel], reshaped
