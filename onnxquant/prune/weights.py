"""Which initializers can be pruned, and along which axes their inputs and outputs lie."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxquant.model_io import tensor_array
from onnxquant.ops.rules import gemm_is_plain, is_depthwise
from onnxquant.passes.node_index import attributes


@dataclass(frozen=True)
class PrunableWeight:
    """A layer's constant weight: ``input_axis`` runs over the input features it multiplies
    (N:M groups and Wanda's activation norms use it), ``output_axis`` over its output channels."""

    node: str
    op_type: str
    initializer: str
    shape: tuple[int, ...]
    input_axis: int
    output_axis: int
    groups: int = 1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class Skipped:
    node: str
    op_type: str
    reason: str


def weight_axes(node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(input axis, output axis) of the weight, or None for layouts we do not prune."""
    if node.op_type == "Conv" and len(shape) >= 3:
        return 1, 0
    if node.op_type == "Gemm" and len(shape) == 2 and gemm_is_plain(node):
        return (1, 0) if attributes(node).get("transB", 0) else (0, 1)
    if node.op_type == "MatMul" and len(shape) == 2:
        return 0, 1
    return None


def prunable_weights(model: onnx.ModelProto, depthwise: bool = False,
                     selected: set[str] | None = None) -> tuple[list[PrunableWeight], list[Skipped]]:
    """Conv, Gemm and MatMul weights held in initializers that only their own layer reads.

    A weight shared between layers is skipped (zeroing it for one would change the other's
    meaning for structured removal, and the report would double count it).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found, skipped = [], []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if selected is not None and node.name not in selected:
            continue
        name = node.input[1]
        if name not in inits:
            continue
        shape = tuple(int(d) for d in inits[name].dims)
        axes = weight_axes(node, shape)
        if axes is None:
            skipped.append(Skipped(node.name, node.op_type, "weight layout not supported"))
        elif readers.get(name, 0) > 1:
            skipped.append(Skipped(node.name, node.op_type, "weight shared with another layer"))
        elif not depthwise and is_depthwise(node, shape):
            skipped.append(Skipped(node.name, node.op_type, "depthwise (prune.depthwise = true to include)"))
        elif inits[name].data_type != onnx.TensorProto.FLOAT:
            skipped.append(Skipped(node.name, node.op_type, "weight is not float32"))
        else:
            groups = int(attributes(node).get("group", 1)) if node.op_type == "Conv" else 1
            found.append(PrunableWeight(node.name, node.op_type, name, shape, *axes, groups=groups))
    return found, skipped


def read(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return tensor_array(init)
    raise KeyError(name)
