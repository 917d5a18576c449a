"""Pass ``convtranspose_as_conv``: a ConvTranspose whose kernel equals its stride becomes a 1x1
Conv to ``k * k * C_out`` channels followed by a DepthToSpace (a pixel shuffle).

onnxruntime's CPU provider has no integer ConvTranspose on x86: between integer kernels it runs
float on a dequantized input, and its float ConvTranspose with a bias is slow. In PP-OCRv4 det's
head (onnxruntime 1.32, one thread) the 2x2 stride-2 ConvTranspose of 24 channels at 120x160 took
6-11 ms of an 85 ms int8 run. With kernel == stride and no padding the output windows do not
overlap: output pixel ``(h * k + i, w * k + j)`` of channel ``o`` is ``sum_c x[c, h, w] *
W[c, o, i, j] + b[o]``, a 1x1 convolution to channel ``(i * k + j) * C_out + o`` moved to its
place, which is DepthToSpace in DCR mode. The 1x1 Conv is a QLinearConv, and the move a copy of
the int8 data (``int8_depth_to_space`` writes it channels-last after quantization: onnxruntime's
own DepthToSpace is a slow generic shuffle). Exact in float: each output sums the same products.

A Relu or Clip that alone reads the ConvTranspose's output moves before the shuffle (elementwise,
so the same values): it then follows the Conv and fuses into its output quantization.

Only ConvTransposes with float initializer weights of rank 4, one group, unit dilations, no
padding, output padding or output shape, and a square kernel larger than 1x1 equal to the stride,
whose weight, bias and output no If/Loop/Scan body reads (the body would lose them), are
rewritten; for the CPU target with uint8 activations and Conv and DepthToSpace quantized (other
targets run ConvTranspose themselves; see pipeline/prepare.py for int8).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.passes.int8_pad import _read_in_bodies
from onnxquant.passes.names import fresh_name, names_in_use
from onnxquant.passes.node_index import NodeIndex, attributes

# Elementwise activations moved ahead of the shuffle (they then fuse into the Conv's output).
_MOVABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})


def convtranspose_as_conv(model: onnx.ModelProto) -> int:
    """Rewrite every eligible ConvTranspose of the main graph in place; returns how many."""
    graph = model.graph
    index = NodeIndex(graph)
    used = names_in_use(graph)
    replacing: dict[int, list[onnx.NodeProto]] = {}
    moved: set[int] = set()
    new_inits: list[TensorProto] = []
    gone: set[str] = set()
    vanished: set[str] = set()  # outputs no node writes any more (a moved activation's input)
    # an If/Loop/Scan body reading the weight, bias or output from the outer scope would lose it
    in_bodies = _read_in_bodies(graph)
    for k, node in enumerate(index.nodes):
        kernel = _shuffle_kernel(node, index)
        if kernel is None or any(name in in_bodies for name in (*node.input[1:3], node.output[0])):
            continue
        weight = tensor_array(index.inits[node.input[1]]).astype(np.float32)
        bias = tensor_array(index.inits[node.input[2]]).astype(np.float32) \
            if len(node.input) > 2 and node.input[2] else None
        activation = _movable_activation(node, index)
        nodes, tensors = _conv_and_shuffle(node, weight, bias, kernel,
                                           None if activation is None else index.nodes[activation], used)
        replacing[k] = nodes
        new_inits.extend(tensors)
        gone.update(node.input[1:3])
        if activation is not None:
            moved.add(activation)
            vanished.add(node.output[0])
    if not replacing:
        return 0
    kept = [m for k, n in enumerate(index.nodes) if k not in moved for m in replacing.get(k, [n])]
    del graph.node[:]
    graph.node.extend(kept)
    read = {i for n in kept for i in n.input} | index.outputs
    unread = [i for i in graph.initializer if i.name in gone and i.name not in read]
    for init in unread:
        graph.initializer.remove(init)
    graph.initializer.extend(new_inits)
    stale = [v for v in graph.value_info if v.name in vanished]
    for info in stale:
        graph.value_info.remove(info)
    return len(replacing)


def _shuffle_kernel(node: onnx.NodeProto, index: NodeIndex) -> int | None:
    """The kernel's side when ``node`` is a ConvTranspose this pass rewrites exactly, else None."""
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    weight = index.inits.get(node.input[1])
    bias = index.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 4 \
            or (len(node.input) > 2 and node.input[2] and (bias is None or bias.data_type != TensorProto.FLOAT)) \
            or node.input[0] in index.inits:
        return None
    attrs = attributes(node)
    kh, kw = (int(d) for d in weight.dims[2:])
    kernel = [int(d) for d in attrs.get("kernel_shape", [kh, kw])]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if kernel != [kh, kw] or [int(s) for s in attrs.get("strides", [1, 1])] != kernel \
            or any(int(d) != 1 for d in attrs.get("dilations", [1, 1])) or int(attrs.get("group", 1)) != 1 \
            or any(int(p) for p in attrs.get("pads", [])) or any(int(p) for p in attrs.get("output_padding", [])) \
            or "output_shape" in attrs or auto_pad not in ("NOTSET", "VALID") or kh != kw or kh == 1:
        return None
    if bias is not None and tuple(bias.dims) != (int(weight.dims[1]),):
        return None
    return kh


def _movable_activation(node: onnx.NodeProto, index: NodeIndex) -> int | None:
    """Position of the Relu/Clip that alone reads ``node``'s output (its bounds constant), if any."""
    out = node.output[0]
    readers = index.readers.get(out, [])
    if out in index.outputs or len(readers) != 1:
        return None
    act = index.nodes[readers[0]]
    if act.op_type not in _MOVABLE_ACTIVATIONS or act.domain not in ("", "ai.onnx") or act.input[0] != out \
            or any(name and name not in index.inits for name in act.input[1:]):
        return None
    return readers[0]


def _conv_and_shuffle(node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None,
                      kernel: int, activation: onnx.NodeProto | None,
                      used: set[str]) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes that compute ``node`` (and ``activation`` after it) as a 1x1 Conv and a shuffle,
    and their constants."""
    k = kernel
    c_out = weight.shape[1]
    base = node.name or node.output[0]

    def name(suffix: str) -> str:
        return fresh_name(used, f"{base}_{suffix}")

    # W[c, o, i, j] -> W'[(i, j, o), c]: output channel (i * k + j) * C_out + o of the 1x1 Conv,
    # DepthToSpace's DCR order
    conv_weight = numpy_helper.from_array(
        np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(k * k * c_out, weight.shape[0], 1, 1)),
        name("weight"))
    constants = [conv_weight]
    conv_inputs = [node.input[0], conv_weight.name]
    if bias is not None:
        conv_bias = numpy_helper.from_array(np.tile(bias, k * k), name("bias"))
        constants.append(conv_bias)
        conv_inputs.append(conv_bias.name)
    conved = name("conv")
    # named as the ConvTranspose was: reports, exclusions and the summary find the layer by it
    nodes = [helper.make_node("Conv", conv_inputs, [conved], name=base, kernel_shape=[1, 1])]
    final = node.output[0]
    if activation is not None:
        act = onnx.NodeProto()
        act.CopyFrom(activation)
        act.input[0] = conved
        conved = name("activated")
        del act.output[:]
        act.output.append(conved)
        nodes.append(act)
        final = activation.output[0]
    nodes.append(helper.make_node("DepthToSpace", [conved], [final], name=name("shuffle"), blocksize=k, mode="DCR"))
    return nodes, constants
