"""Keep onnxruntime from folding a static-shape Linear's bias Add into a Gemm between reshapes.

At load time onnxruntime's optimizer (``MatMulAddFusion``) rewrites ``MatMul(x, W) -> Add(., b)``
whose input shape it knows as ``Reshape(x, (N, K)) -> Gemm(., W, b) -> Reshape`` when ``x`` has
rank 3 or more. On a quantized model it does that before its QDQ fusions: the MatMul between its
Q/DQ pairs becomes a Gemm behind a Reshape, no integer kernel matches it, and the layer runs in
float with its dequantizations (a static-shape encoder's FFN and attention output MatMuls, 12 of
MiniLM's 24 layers). That fusion takes a 1-D bias only when it must reshape: the bias is written
with the Add's rank, ``(1, ..., 1, N)``, the same values broadcast the same way, which it declines.

The Add stays an Add (not Sum, which the quantizer would write back; onnxruntime.transformers'
fusions and bias correction read ``MatMul -> Add``), and the pass runs after the transformer
fusion. Only MatMuls whose output shape inference declared static with rank 3 or more are taken:
a 2-D MatMul (an MLP) is fused by onnxruntime into a plain Gemm, which has its own integer kernel,
and one of unknown rank cannot be told apart, so both are left as they are.
"""
from __future__ import annotations

import onnx

from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name
from onnxquant.passes.node_index import NodeIndex
from onnxquant.passes.weight_only import drop_unread

MIN_RANK = 3  # onnxruntime reshapes (and so folds a 1-D bias) only around MatMuls of rank 3 or more


def static_biases(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Give each 1-D bias added to a constant-weight MatMul's output of declared rank >= MIN_RANK
    (in ``shapes``, read before any fusion renamed values) that rank, in place; return how many."""
    graph = model.graph
    index = NodeIndex(graph)
    taken = {n for node in index.nodes for n in (*node.input, *node.output)} | set(index.inits)
    taken |= {i.name for i in graph.input} | {n.name for n in index.nodes if n.name}
    replaced: set[str] = set()  # the old 1-D biases
    count = 0
    for node in index.nodes:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        shape = shapes.get(node.output[0])
        weight = index.inits.get(node.input[1])
        if shape is None or len(shape) < MIN_RANK or weight is None or len(weight.dims) != 2:
            continue
        k = index.only_reader(node.output[0], "Add")
        if k is None or node.output[0] in index.outputs:
            continue
        add = index.nodes[k]
        if len(add.input) != 2 or add.domain not in ("", "ai.onnx"):
            continue
        slot = 1 if add.input[0] == node.output[0] else 0
        bias = index.inits.get(add.input[slot])
        if bias is None or list(bias.dims) != [weight.dims[1]]:
            continue
        value = tensor_array(bias).reshape((1,) * (len(shape) - 1) + (-1,))
        name = fresh_name(taken, f"{bias.name}_rank{len(shape)}")
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        add.input[slot] = name
        replaced.add(bias.name)
        count += 1
    drop_unread(graph, replaced)
    return count
